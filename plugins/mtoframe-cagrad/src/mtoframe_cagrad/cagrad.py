"""CAGrad: conflict-averse gradient descent.

Liu, Liu, Jin, Stone, Liu. *Conflict-Averse Gradient Descent for Multi-task Learning*,
NeurIPS 2021, https://arxiv.org/abs/2110.14048 (official code: https://github.com/Cranial-XIX/CAGrad).

With ``g0 = mean_t g_t`` and ``g_w = Σ_t w_t g_t``::

    w* = argmin_{w ∈ simplex}  g_wᵀ g0 + c ‖g0‖ ‖g_w‖
    d  = g0 + (c ‖g0‖ / ‖g_w*‖) g_w*

then ``d / (1 + c²)`` (``rescale = 1``, default, both references), ``d`` (``rescale = 0``) or
``d / (1 + c)`` (``rescale = 2``), and ``T · d`` with ``scale_by_tasks = True`` (the official code
multiplies by the number of tasks; LibMTL does not, default off). ``c = 0.4`` is the paper's
NYUv2 value (LibMTL's default is 0.5). ``c = 0`` gives ``g0`` exactly (no solve); as ``c`` grows
``w*`` tends to the min-norm (MGDA) weights and ``d`` to the MGDA direction.

``max_norm`` (default 0: off, as the official CAGrad code and LibMTL) clips the final update's
norm with ``clip_grad_norm_``'s coefficient: the copy of CAGrad in the Nash-MTL and FAMO code
bases (which also multiplies by ``T``) calls ``clip_grad_norm_(shared, 1.0)`` after writing the
update into the shared gradients, so ``scale_by_tasks=True, max_norm=1.0`` reproduces their runs
(the two-task toy's protocol (b)).

The problem only needs the Gram matrix ``K = GGᵀ``. It is normalised, ``K̂ = K / ‖K‖_F`` (w* and
the ratio ‖g0‖/‖g_w‖ do not change, and the 1e-8 … 1e8 gradient scales behave alike), factored
as ``K̂ = RᵀR`` with ``R = diag(sqrt(max(λ, 0))) Vᵀ`` from its symmetric eigendecomposition
(``numpy.linalg.eigh`` on the host copy; clamping the round-off negative eigenvalues of a
rank-deficient ``K̂``, where a Cholesky factor would fail), and
posed as a second-order cone programme with parameters ``b = K̂ 1/T`` and ``R' = c ‖ĝ0‖ R``::

    minimise  bᵀw + ‖R' w‖₂   subject to  w ≥ 0, Σ w = 1

which is DPP: it is compiled once per number of tasks (shared by the process) and solved with
Clarabel in about a millisecond. The official code solves the same problem with
``scipy.optimize.minimize`` (SLSQP) from ``w = 1/T`` every step, with small absolute epsilons
(``+1e-8``) that depend on the gradient scale; here they are not needed, except that when
``‖g_w*‖`` is zero (``wᵀK̂w ≤ 1e-20``) the second term is dropped, as the official ``+1e-8`` in the
denominator effectively does.

Solver failure (exception, bad status, non-finite solution): the previous ``w*`` of the present
tasks (renormalised; uniform before the first success) is used, a
:class:`~mtoframe.solvers.SolverWarning` is issued once per instance and the count is logged as
``solver/failures/cagrad``. A non-finite Gram matrix (a float32 one that overflowed) is counted
the same way and gives ``g0`` (``mtoframe.aggregate`` rescales such a matrix first).

Heads receive their (unweighted) task gradients, as in both references. Host work: the ``T×T``
Gram matrix goes to the CPU (the one sync a CPU solver needs) and ``T`` coefficients come back;
``d`` is formed on the device as one ``T``-vector times ``G``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from mtoframe import GramWeighting, StateSpec, StepContext, hookimpl
from mtoframe.gram_weighting import TaskState
from mtoframe.options import boolean, in_range, one_of
from mtoframe.solvers import CompiledProblems, ConvexProblem

ZERO_DIRECTION = 1e-20  # wᵀK̂w below this (K̂ has unit Frobenius norm): g_w* is the zero vector


@attrs.frozen(kw_only=True)
class CAGradOptions:
    #: radius of the ball around g0 (paper NYUv2: 0.4; LibMTL: 0.5).
    c: float = attrs.field(default=0.4, validator=in_range(0.0))
    #: 0: d; 1: d / (1 + c²) (both references); 2: d / (1 + c).
    rescale: int = attrs.field(default=1, validator=one_of((0, 1, 2)))
    #: multiply the update by T (official code) instead of not (LibMTL).
    scale_by_tasks: bool = attrs.field(default=False, validator=boolean())
    #: clip the update to this norm; 0 disables (official code, LibMTL; Nash-MTL/FAMO's copy: 1.0).
    max_norm: float = attrs.field(default=0.0, validator=in_range(0.0))


def _build(size: int) -> Any:
    def build(cp: Any) -> Any:
        w = cp.Variable(size, nonneg=True)
        b = cp.Parameter(size, name="b")
        r = cp.Parameter((size, size), name="r")
        problem = cp.Problem(cp.Minimize(b @ w + cp.norm(r @ w, 2)), [cp.sum(w) == 1])
        return problem, w, {"b": b, "r": r}

    return build


def gram_factor(k: np.ndarray) -> np.ndarray:
    """``R`` with ``RᵀR = K`` for a symmetric PSD ``K``, robust to rank deficiency."""
    lam, vec = np.linalg.eigh(0.5 * (k + k.T))
    factor: np.ndarray = np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T
    return factor


class CAGrad(GramWeighting):
    __doc__ = __doc__
    name = "cagrad"
    summary = "CAGrad: maximise the worst task improvement in a ball around the mean gradient (cvxpy/Clarabel SOCP)."
    paper = "Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021, arXiv:2110.14048"
    defaults_reproduce = ("c = 0.4 (paper, NYUv2; LibMTL uses 0.5); rescale = 1 (both references); "
                          "scale_by_tasks off (LibMTL; the official code multiplies by T)")
    Options = CAGradOptions
    heads_receive = "their unweighted task gradients (both references)"
    host = True
    fallback = "using the previous weights w* (uniform before the first solve)"
    #: the last w* of every task of the full task list (ones before its first solve: the fallback
    #: renormalises the present tasks' entries, so it is uniform before any solve)
    state_spec: ClassVar[Mapping[str, StateSpec]] = {"weights": StateSpec(init=1.0)}

    @property
    def scale_degree(self) -> float | None:
        # w* and the ratio ‖g0‖/‖g_w*‖ do not depend on the scale of G; clipping breaks the law
        return 1.0 if self.options.max_norm == 0 else None

    @property
    def max_norm(self) -> float:
        return float(self.options.max_norm)

    def __init__(self, options: Any = None, /, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.problems = CompiledProblems(self.name, _build)

    @property
    def weights(self) -> np.ndarray | None:
        """The last w* of every task of the full task list (None before the first step)."""
        entry = self.state_entry("weights")
        return None if entry is None else entry.numpy()

    def problem(self, size: int) -> ConvexProblem:
        return self.problems.for_tasks(size)

    def coefficients(self, gram: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """``u`` such that the update is ``uᵀG`` (rescaling included, before ``max_norm``); ``prev``
        (the present tasks' last w*) is updated in place by a successful solve."""
        T = gram.shape[0]
        c = self.options.c
        u = np.full(T, 1.0 / T)
        if not np.all(np.isfinite(gram)):
            # e.g. a float32 Gram matrix that overflowed: no w* can be computed from it
            self.failures.record("non-finite Gram matrix")
            scale = 0.0
        else:
            scale = float(np.linalg.norm(gram))
        if c > 0 and scale > 0:
            kh = gram / scale
            g0 = float(np.sqrt(max(kh.mean(), 0.0)))
            if g0 > 0:
                w = self._solve(kh, g0, prev)
                gw2 = float(w @ kh @ w)
                if gw2 > ZERO_DIRECTION:
                    u = u + (c * g0 / np.sqrt(gw2)) * w
        u = u / {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[self.options.rescale]
        scaled: np.ndarray = u * T if self.options.scale_by_tasks else u
        return scaled

    def _solve(self, kh: np.ndarray, g0: float, prev: np.ndarray) -> np.ndarray:
        result = self.problem(len(prev)).solve(b=kh.mean(axis=1), r=(self.options.c * g0) * gram_factor(kh))
        if result.ok and result.value is not None:
            w: np.ndarray = np.clip(result.value, 0.0, None)
            total = w.sum()
            if total > 0:
                w = w / total
                prev[:] = w
                return w
            reason = "solution has no positive weight"
        else:
            reason = result.reason
        self.failures.record(reason)
        return prev / prev.sum() if prev.sum() > 0 else np.full(len(prev), 1.0 / len(prev))

    @hookimpl
    def on_train_start(self, trainer: Any) -> None:
        # compile now: a missing back-end fails before the first step, and step 0 is not slow
        self.problem(len(trainer.tasks))

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> torch.Tensor:
        prev = state["weights"]
        u = self.coefficients(gram.numpy(), prev.numpy())
        state["weights"] = prev
        return torch.from_numpy(u)
