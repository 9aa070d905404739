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
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from .errors import SolverError
from .failures import FailureCounter, SolverWarning

__all__ = [
    "CompiledProblems",
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
    """A cvxpy DPP problem, compiled once and re-solved with new parameter values.

    :param build: ``build(cp) -> (problem, variable, {name: parameter})``; called once.
    :param name: used in messages.

    The DPP property is asserted at construction: a problem that is not DPP would be
    re-canonicalised on every solve (tens of milliseconds), which is a bug, not a slow path.

    Speed: for these tiny problems most of ``cvxpy.Problem.solve`` is spent rebuilding the solver's
    sparse matrices from the parameters (``apply_parameters``, several times the Clarabel solve
    itself). Because a DPP problem's solver data ``(A, b, c)`` is *affine* in the parameters, it is
    recorded once at compile time through cvxpy's public ``get_problem_data`` (at zero and at each
    unit parameter entry) as dense ``data = data₀ + Σ θᵢ Δᵢ``; a solve then evaluates that map,
    and hands the data to cvxpy's own Clarabel interface and result unpacking, so settings, cones
    and statuses are exactly cvxpy's. ``fast=False`` uses ``Problem.solve`` instead.
    """

    def __init__(self, build: Callable[[Any], tuple[Any, Any, Mapping[str, Any]]], *, name: str, fast: bool = True) -> None:
        self._cp = require_cvxpy()
        self.name = name
        self.problem, self.variable, params = build(self._cp)
        self.parameters = dict(params)
        if not self.problem.is_dcp(dpp=True):
            raise SolverError(f"{name}: the convex problem is not DPP, so it cannot be compiled once")
        self.solves = 0
        self._lock = threading.Lock()
        self._theta_now = np.zeros(0)
        self._affine: dict[str, Any] | None = self._compile() if fast else None

    def _set_theta(self, theta: np.ndarray) -> None:
        offset = 0
        for p in self.parameters.values():
            p.value = theta[offset : offset + p.size].reshape(p.shape, order="F")
            offset += p.size

    def _compile(self) -> dict[str, Any]:
        cp = self._cp
        n = sum(p.size for p in self.parameters.values())

        def data_at(theta: np.ndarray) -> tuple[dict[str, Any], Any, Any]:
            self._set_theta(theta)
            return self.problem.get_problem_data(cp.CLARABEL)

        base, chain, inverse = data_at(np.zeros(n))
        # what Problem.solve records before unpacking (no options: cvxpy's Clarabel defaults)
        inverse[-1].solver_options = {}
        # every solver-data entry is affine in the parameters for a DPP problem (P too, for QPs)
        matrices = [k for k in ("A", "P") if base.get(k) is not None]
        keys = (*matrices, "b", "c")
        shapes = {k: base[k].shape for k in matrices}

        def flat(data: dict[str, Any]) -> dict[str, np.ndarray]:
            out = {k: data[k].toarray().reshape(-1) for k in matrices}
            if any(data[k].shape != shapes[k] for k in matrices):
                raise SolverError(f"{self.name}: solver data changed shape with the parameters; not DPP-affine")
            return {**out, "b": np.asarray(data["b"], float), "c": np.asarray(data["c"], float)}

        zero = flat(base)
        deltas: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for i in range(n):
            unit = np.zeros(n)
            unit[i] = 1.0
            probe = flat(data_at(unit)[0])
            for k in keys:
                deltas[k].append(probe[k] - zero[k])
        return {
            "base": base, "chain": chain, "inverse": inverse, "shapes": shapes, "zero": zero,
            "delta": {k: np.stack(deltas[k], axis=1) if n else np.zeros((zero[k].size, 0)) for k in keys},
            "interface": chain.reductions[-1],
        }

    def solve(self, **values: np.ndarray) -> SolveResult:
        """Set every parameter and solve with Clarabel. Never raises for a numerical failure:
        an exception, a status other than optimal / optimal_inaccurate or a non-finite
        solution gives ``ok=False`` with the reason."""
        if set(values) != set(self.parameters):
            raise SolverError(f"{self.name}: solve needs exactly the parameters {sorted(self.parameters)}, "
                              f"got {sorted(values)}")
        with self._lock:
            return self._solve(values)

    def _solve(self, values: Mapping[str, np.ndarray]) -> SolveResult:
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        for key, value in arrays.items():
            if value.shape != self.parameters[key].shape:
                raise SolverError(f"{self.name}: parameter {key!r} needs shape {self.parameters[key].shape}, got {value.shape}")
        try:
            if self._affine is None:
                for key, value in arrays.items():
                    self.parameters[key].value = value
            # the fast path reads θ directly (cvxpy's per-assignment validation costs as much as the solve)
            self._theta_now = np.concatenate([arrays[k].reshape(-1, order="F") for k in self.parameters])
            self.solves += 1
            self._run()
        except Exception as exc:  # a failed solve is reported to the caller, who falls back explicitly
            return SolveResult(False, None, "error", f"{type(exc).__name__}: {exc}")
        status = str(self.problem.status)
        if status not in _OK_STATUSES:
            return SolveResult(False, None, status, f"solver status {status!r}")
        value = self.variable.value
        if value is None or not np.all(np.isfinite(value)):
            return SolveResult(False, None, status, "non-finite solution")
        return SolveResult(True, np.asarray(value, dtype=np.float64), status)

    def _run(self) -> None:
        """One Clarabel solve at the current parameter values; sets the variable's value and the
        problem's status. (Tests replace this to force a failure.)"""
        if self._affine is None:
            # warm_start=False: cvxpy would otherwise reuse the previous solve's data, making the
            # result depend on history (a resumed run would not be bit-identical)
            self.problem.solve(solver=self._cp.CLARABEL, warm_start=False)
            return
        import scipy.sparse as sp

        aff = self._affine
        theta = self._theta_now
        data = dict(aff["base"])
        for k in ("b", "c"):
            data[k] = aff["zero"][k] + aff["delta"][k] @ theta
        for k, shape in aff["shapes"].items():
            data[k] = sp.csc_array((aff["zero"][k] + aff["delta"][k] @ theta).reshape(shape))
        raw = aff["interface"].solve_via_data(data, False, False, {})
        # sets the variable's value and the status; problem.value would carry the objective's
        # constant term of the compile-time parameters, so callers read the variable only
        self.problem.unpack_results(raw, aff["chain"], aff["inverse"])


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


class CompiledProblems(Mapping[int, ConvexProblem]):
    """One method's convex problems by task count: ``for_tasks(T)`` takes the problem from the
    process-wide :func:`compiled` cache on first use; iterating gives the task counts used.

    :param method: the method's name (the cache key and messages).
    :param build: ``build(T)`` -> the ``build(cp)`` function of :class:`ConvexProblem` for ``T`` tasks.
    """

    def __init__(self, method: str, build: Callable[[int], Callable[[Any], tuple[Any, Any, Mapping[str, Any]]]]) -> None:
        self.method = method
        self._build = build
        self._by_size: dict[int, ConvexProblem] = {}

    def for_tasks(self, size: int) -> ConvexProblem:
        problem = self._by_size.get(size)
        if problem is None:
            problem = compiled((self.method, size), self._build(size), name=f"{self.method} (T={size})")
            self._by_size[size] = problem
        return problem

    def __getitem__(self, size: int) -> ConvexProblem:
        return self._by_size[size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_size)

    def __len__(self) -> int:
        return len(self._by_size)


def nonzero_rows(k: np.ndarray, rel_tol: float = 1e-16) -> np.ndarray:
    """Boolean mask of the rows of ``G`` that are not (numerically) zero, from ``K = G Gᵀ``:
    ``‖g_t‖² > rel_tol · max_s ‖g_s‖²``. Bargaining-type equations (``α_t (Kα)_t = 1``) have no
    solution with a zero row, so the methods solve on the other rows."""
    d = np.diag(k)
    top = d.max() if d.size else 0.0
    return d > rel_tol * top if top > 0 else np.zeros(d.shape, dtype=bool)
