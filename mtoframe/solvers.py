"""Small convex programmes compiled once and solved with Clarabel, and explicit failure handling.

Methods such as Nash-MTL and CAGrad solve a tiny (``T×T``) convex problem every step. Posed as a
cvxpy *DPP* problem (Disciplined Parametrized Programming), the problem is canonicalised once and
every later solve only rewrites the numbers, which takes about a millisecond for ``T ≤ 10``.

:class:`ConvexProblem` wraps such a problem. Its :meth:`~ConvexProblem.solve` never raises for a
numerical failure: it returns a :class:`SolveResult` with ``ok=False`` and the reason, and the
caller applies its documented fallback and records the failure with a :class:`FailureCounter`,
which counts, warns once per method instance and logs ``solver/failures/<method>``. A missing
back-end is different: it is a configuration error and raises :class:`~mtoframe.errors.SolverError`
naming the ``pip install`` that fixes it (the reference implementations silently fell back to
equal weighting in that case).

cvxpy is imported lazily, so methods that do not use it (FairGrad) and the core never need it.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .errors import SolverError

if TYPE_CHECKING:
    from .context import StepContext

__all__ = [
    "ConvexProblem",
    "FailureCounter",
    "SolveResult",
    "SolverWarning",
    "compiled",
    "nonzero_rows",
    "require_cvxpy",
]

INSTALL_HINT = "pip install cvxpy clarabel  (or: pip install 'mtoframe[solvers]')"
_OK_STATUSES = ("optimal", "optimal_inaccurate")


class SolverWarning(UserWarning):
    """A solver failed and a method used its documented fallback."""


def require_cvxpy() -> Any:
    """The ``cvxpy`` module, with Clarabel available; :class:`SolverError` otherwise."""
    try:
        import cvxpy as cp
    except ImportError as exc:
        raise SolverError(f"this method needs the cvxpy back-end, which is not installed ({exc}); {INSTALL_HINT}") from exc
    try:
        import clarabel  # noqa: F401
    except ImportError as exc:
        raise SolverError(f"this method needs the Clarabel solver, which is not installed ({exc}); {INSTALL_HINT}") from exc
    if "CLARABEL" not in cp.installed_solvers():
        raise SolverError(f"cvxpy does not see the Clarabel solver; {INSTALL_HINT}")
    return cp


class SolveResult(NamedTuple):
    """Outcome of one solve: ``value`` (float64 array) is set only when ``ok``."""

    ok: bool
    value: np.ndarray | None
    status: str
    reason: str = ""


class ConvexProblem:
    """A cvxpy DPP problem, compiled on the first solve and re-solved with new parameter values.

    :param build: ``build(cp) -> (problem, variable, {name: parameter})``; called once.
    :param name: used in messages.

    The DPP property is asserted at construction: a problem that is not DPP would be
    re-canonicalised on every solve (tens of milliseconds), which is a bug, not a slow path.
    """

    def __init__(self, build: Callable[[Any], tuple[Any, Any, Mapping[str, Any]]], *, name: str) -> None:
        self._cp = require_cvxpy()
        self.name = name
        self.problem, self.variable, params = build(self._cp)
        self.parameters = dict(params)
        if not self.problem.is_dcp(dpp=True):
            raise SolverError(f"{name}: the convex problem is not DPP, so it cannot be compiled once")
        self.solves = 0
        self._lock = threading.Lock()

    def solve(self, **values: np.ndarray) -> SolveResult:
        """Set the parameters and solve with Clarabel. Never raises for a numerical failure:
        an exception, a status other than optimal / optimal_inaccurate or a non-finite
        solution gives ``ok=False`` with the reason."""
        unknown = set(values) - set(self.parameters)
        if unknown:
            raise SolverError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.parameters)}")
        with self._lock:
            return self._solve(values)

    def _solve(self, values: Mapping[str, np.ndarray]) -> SolveResult:
        try:
            for key, value in values.items():
                self.parameters[key].value = value
            self.solves += 1
            # warm_start=False: cvxpy would otherwise reuse the previous solve's data, making the
            # result depend on history (a resumed run would not be bit-identical)
            self.problem.solve(solver=self._cp.CLARABEL, warm_start=False)
        except Exception as exc:  # a failed solve is reported to the caller, who falls back explicitly
            return SolveResult(False, None, "error", f"{type(exc).__name__}: {exc}")
        status = str(self.problem.status)
        if status not in _OK_STATUSES:
            return SolveResult(False, None, status, f"solver status {status!r}")
        value = self.variable.value
        if value is None or not np.all(np.isfinite(value)):
            return SolveResult(False, None, status, "non-finite solution")
        return SolveResult(True, np.asarray(value, dtype=np.float64), status)


_COMPILED: dict[tuple[Any, ...], ConvexProblem] = {}
_COMPILED_LOCK = threading.Lock()


def compiled(key: tuple[Any, ...], build: Callable[[Any], tuple[Any, Any, Mapping[str, Any]]], *, name: str) -> ConvexProblem:
    """The :class:`ConvexProblem` for ``key`` (e.g. ``("nashmtl", T)``), built on first use and
    shared by the whole process. Sharing is safe: a solve depends only on the parameter values
    given to it (no warm start), and solves of one problem are serialised by a lock."""
    with _COMPILED_LOCK:
        if key not in _COMPILED:
            _COMPILED[key] = ConvexProblem(build, name=name)
        return _COMPILED[key]


class FailureCounter:
    """Counts a method instance's solver failures, warns on the first one and logs the count
    as ``solver/failures/<method>`` on every logging step."""

    def __init__(self, method: str, fallback: str) -> None:
        self.method = method
        self.fallback = fallback
        self.count = 0
        self._warned = False

    def record(self, reason: str) -> None:
        self.count += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.method}: solver failed ({reason}); {self.fallback}. Further failures are counted "
                f"in solver/failures/{self.method} without another warning.",
                SolverWarning,
                stacklevel=3,
            )

    def log(self, ctx: StepContext) -> None:
        ctx.log(f"solver/failures/{self.method}", float(self.count))


def nonzero_rows(k: np.ndarray, rel_tol: float = 1e-16) -> np.ndarray:
    """Boolean mask of the rows of ``G`` that are not (numerically) zero, from ``K = G Gᵀ``:
    ``‖g_t‖² > rel_tol · max_s ‖g_s‖²``. Bargaining-type equations (``α_t (Kα)_t = 1``) have no
    solution with a zero row, so the methods solve on the other rows."""
    d = np.diag(k)
    top = d.max() if d.size else 0.0
    return d > rel_tol * top if top > 0 else np.zeros(d.shape, dtype=bool)
