"""Nash-MTL: the Nash bargaining solution of the tasks' gradients.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya. *Multi-Task Learning as a
Bargaining Game*, ICML 2022, https://arxiv.org/abs/2202.01017 (official code:
https://github.com/AvivNavon/nash-mtl).

Weights ``α > 0`` solve ``α_t (G Gᵀ α)_t = 1`` for every task t; the shared update is
``d = Σ_t α_t g_t`` (so ``‖d‖² = Σ_t α_t (GGᵀα)_t = T`` at the solution), then clipped to norm
``max_norm``. Closed form for T = 2: ``α_t = 1 / (‖g_t‖ sqrt(1 + cos(g_1, g_2)))``.

Solving, as the reference does, by a sequence of at most ``optim_niter`` convex problems
(variable ``β ≥ 0``)::

    minimise    Σ_t (Ĝβ)_t + vᵀβ
    subject to  −log β_t − log (Ĝβ)_t ≤ 0        for every t
    with        Ĝ = GGᵀ / ‖GGᵀ‖_F,   v = 1/β_prev + Ĝᵀ (1 / (Ĝ β_prev))

and ``α = β / sqrt(‖GGᵀ‖_F)``. Differences from the reference, each deliberate:

* ``v`` is a cvxpy *parameter* (the reference multiplies two parameters, which is not DPP), so
  the problem is compiled once per number of tasks (and shared by every instance in the
  process) and each solve costs about a millisecond with Clarabel (the reference uses ECOS).
* The variable is the normalised ``β`` rather than ``α``. The constraints are the reference's
  (``−log(α_t n) − log(Ĝα)_t``, with ``α = β/√n``); the reference's objective weights the
  linearisation by ``1/n`` in α-units, i.e. by ``1/√n`` in β-units, which makes the iteration
  depend on the gradients' scale (at scale 1e8 the linearisation vanishes and, measured on a
  5-task family, the iteration stalls with residual 0.14). With the weight 1 used here the
  fixed point is the same and the 1e-8 … 1e8 scales behave alike.
* Stopping: before solving, if the warm start already has residual ``‖Ĝβ − 1/β‖ < 1e-3`` no
  solve is done; after each solve, stop when ``β`` moved less than 1e-6 or the residual is below
  1e-3 (the reference's two rules, in normalised units, where they are scale-free). The
  reference always solves at least once and evaluates the residual with un-normalised α.
* Where the warm start has ``(Ĝβ)_t ≤ 0`` (strongly conflicting gradients) the linearisation
  point is not in the domain; its ``1/(Ĝβ)_t`` term is set to 0 for that first solve (any
  finite ``v`` gives a valid sub-problem, and every solution is feasible thereafter).
* A task whose gradient is zero (``‖g_t‖² ≤ 1e-16 max_s ‖g_s‖²``) makes the equations
  unsolvable; it is left out of the bargaining and keeps its previous α (which then only
  scales its head's gradient, its shared row being zero).
* Solver failure (exception, bad status, non-finite solution): the previous α is kept (ones
  before the first success, as the reference's initial ``prvs_alpha``), a
  :class:`~mtoframe.solvers.SolverWarning` is issued once per method instance and the count is
  logged as ``solver/failures/nashmtl``. The reference's bare ``except:`` silently used the
  previous value, and it became equal weighting when ECOS was missing; a missing back-end
  raises :class:`~mtoframe.errors.SolverError` here.

``update_weights_every = k`` re-solves on every k-th call and reuses α in between (the per-task
gradients are still needed in between to form ``Σ α_t g_t``). α is kept per task of the
trainer's full task list, so partial labels warm-start each present task from its own value.

``max_norm`` clips the aggregated shared update as the reference does: its ``backward`` calls
``clip_grad_norm_(shared_parameters, max_norm)`` after ``loss.backward()``, so the clip acts on
the shared parameters' new gradient ``Σ α_t g_t`` and not on the heads'; same coefficient as
``torch.nn.utils.clip_grad_norm_``. ``max_norm = 0`` disables it.

Heads receive α-weighted gradients (the reference back-propagates ``Σ_t α_t L_t``).

Host work: one ``T×T`` Gram matrix goes to the CPU per solve (inherent to a CPU solver: it is
the only sync) and α comes back; ``d = αᵀG`` is formed on the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from mtoframe import GramWeighting, StateSpec, StepContext, Weights, hookimpl
from mtoframe.gram_weighting import TaskState
from mtoframe.options import in_range, integer
from mtoframe.solvers import CompiledProblems, ConvexProblem, nonzero_rows

RESIDUAL_TOL = 1e-3
CHANGE_TOL = 1e-6


@attrs.frozen(kw_only=True)
class NashMTLOptions:
    #: maximum number of convex sub-problems per weight update (reference: 20).
    optim_niter: int = attrs.field(default=20, validator=integer(1))
    #: re-solve for α every this many steps, reusing α in between (reference: 1).
    update_weights_every: int = attrs.field(default=1, validator=integer(1))
    #: clip the shared update to this norm; 0 disables (reference: 1.0).
    max_norm: float = attrs.field(default=1.0, validator=in_range(0.0))


def _build(size: int) -> Any:
    def build(cp: Any) -> Any:
        beta = cp.Variable(size, nonneg=True)
        gram = cp.Parameter((size, size), name="gram")
        v = cp.Parameter(size, name="v")
        kb = gram @ beta
        problem = cp.Problem(cp.Minimize(cp.sum(kb) + v @ beta), [-cp.log(beta) - cp.log(kb) <= 0])
        return problem, beta, {"gram": gram, "v": v}

    return build


class NashMTL(GramWeighting):
    __doc__ = __doc__
    name = "nashmtl"
    summary = "Nash-MTL: Nash bargaining weights α_t (GGᵀα)_t = 1 by sequential convex programming (cvxpy/Clarabel)."
    paper = "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022, arXiv:2202.01017"
    defaults_reproduce = "official code (optim_niter 20, max_norm 1.0, update every step); Clarabel instead of ECOS"
    Options = NashMTLOptions
    ignores_loss_weights = "Nash-MTL's update is invariant to rescaling each task's gradient"
    heads_receive = "α-weighted task gradients (the reference back-propagates Σ α_t L_t)"
    host = True
    fallback = "keeping the previous weights α"
    #: α in true units (ones before the first success, as the reference's initial prvs_alpha) and
    #: the normalised warm start β
    state_spec: ClassVar[Mapping[str, StateSpec]] = {"alpha": StateSpec(init=1.0), "beta": StateSpec(init=1.0)}

    @property
    def scale_degree(self) -> float | None:
        # α scales as 1/c, so d = αᵀG (and its clipped version) does not depend on the scale of G
        return 0.0

    @property
    def max_norm(self) -> float:
        return float(self.options.max_norm)

    def __init__(self, options: Any = None, /, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.problems = CompiledProblems(self.name, _build)

    def reset(self) -> None:
        super().reset()
        self.calls = 0
        self.solves = 0

    @property
    def alpha(self) -> np.ndarray | None:
        """α of every task of the full task list (None before the first step)."""
        entry = self.state_entry("alpha")
        return None if entry is None else entry.numpy()

    # -- solving -------------------------------------------------------------------------------

    def problem(self, size: int) -> ConvexProblem:
        """The compiled problem for ``size`` tasks (built on first use, shared by the process)."""
        return self.problems.for_tasks(size)

    def solve(self, gram: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> None:
        """Update ``alpha`` and the warm start ``beta`` (of the present tasks, in place) from
        their Gram matrix; both are kept on a failure."""
        if not np.all(np.isfinite(gram)):
            self.failures.record("non-finite Gram matrix")
            return
        active = nonzero_rows(gram)
        if not active.any():
            return
        k = gram[np.ix_(active, active)]
        k = 0.5 * (k + k.T)
        scale = float(np.linalg.norm(k))
        kh = k / scale
        b = beta[active].copy()
        if not np.all(np.isfinite(b) & (b > 0)):
            b = np.ones_like(b)
        if not _converged(kh, b):
            problem = self.problem(len(b))
            for _ in range(self.options.optim_niter):
                kb = kh @ b
                inv = np.divide(1.0, kb, out=np.zeros_like(kb), where=kb > 0)
                result = problem.solve(gram=kh, v=1.0 / b + kh.T @ inv)
                self.solves += 1
                if not result.ok or result.value is None:
                    self.failures.record(result.reason)
                    return
                new = np.maximum(result.value, np.finfo(np.float64).tiny)
                moved = float(np.linalg.norm(new - b))
                b = new
                if moved < CHANGE_TOL or _converged(kh, b):
                    break
        beta[active] = b
        alpha[active] = b / np.sqrt(scale)

    # -- the step ------------------------------------------------------------------------------

    @hookimpl
    def on_train_start(self, trainer: Any) -> None:
        # compile now: a missing back-end fails before the first step, and step 0 is not slow
        self.problem(len(trainer.tasks))

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> Weights:
        alpha, beta = state["alpha"], state["beta"]
        if self.calls % self.options.update_weights_every == 0:
            self.solve(gram.numpy(), alpha.numpy(), beta.numpy())
            state["alpha"], state["beta"] = alpha, beta
        self.calls += 1
        return Weights(alpha, alpha)

    def extra_state(self) -> dict[str, Any]:
        return {"calls": self.calls, "solves": self.solves}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
        self.solves = int(state["solves"])


def _converged(kh: np.ndarray, beta: np.ndarray) -> bool:
    kb = kh @ beta
    return bool(np.all(kb > 0)) and float(np.linalg.norm(kb - 1.0 / beta)) < RESIDUAL_TOL
