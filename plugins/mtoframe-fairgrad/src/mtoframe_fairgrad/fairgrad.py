"""FairGrad: α-fair allocation of the update among tasks.

Ban & Ji. *Fair Resource Allocation in Multi-Task Learning*, ICML 2024,
https://arxiv.org/abs/2402.15638 (official code: https://github.com/OptMN-Lab/fairgrad).

Weights ``w > 0`` solve ``GGᵀ w = w^(−1/α)`` (elementwise); the update is ``d = Σ_t w_t g_t``.
``α = 1`` is Nash-MTL's ``w_t (GGᵀw)_t = 1``; ``α → ∞`` approaches equal improvement (max-min
fairness). ``alpha = 2.0`` is the authors' experimental setting (their code's default is 1.0).

Solved as both references do: non-negative least squares of the residual
``GGᵀw − w^(−1/α)`` with ``scipy.optimize.least_squares(..., bounds=(0, inf))`` (trust-region
reflective, default tolerances) from ``w = 1/T``. Differences, each deliberate:

* The Gram matrix is normalised first, ``K̂ = GGᵀ/‖GGᵀ‖_F``, and the solution mapped back,
  ``w = ŵ · ‖GGᵀ‖_F^(−α/(α+1))`` (exact: ``K̂ŵ = ŵ^(−1/α)`` ⇔ ``GGᵀw = w^(−1/α)``), so the start
  ``1/T`` and the solver's tolerances mean the same thing at every gradient scale (the reference
  starts from ``1/T`` in raw units, far from the solution at scales 1e-8 or 1e8).
* The analytic Jacobian ``K̂ + diag(ŵ^(−1/α−1)/α)`` is passed instead of finite differences
  (same solution, fewer residual evaluations).
* A task whose gradient is zero makes the equations unsolvable (``0 = w_t^(−1/α)``); it is left
  out and gets weight 0 (its row contributes nothing to ``d`` either way; with the ``"libmtl"``
  variant its head then gets no gradient that step, where LibMTL's unbounded solve would push
  that weight towards infinity).
* The solve counts as failed when scipy reports failure, the solution is not finite and positive,
  or the relative residual ``‖K̂ŵ − ŵ^(−1/α)‖ / ‖ŵ^(−1/α)‖`` exceeds 1e-3 (e.g. rank-deficient
  gradients with no direction improving every task: no positive solution exists, and the
  reference would silently use whatever least squares returned). Then the previous weights of
  the present tasks are used (before any success: the starting point ``1/T`` of the normalised
  problem), a :class:`~mtoframe.solvers.SolverWarning` is issued once per instance and the count
  is logged as ``solver/failures/fairgrad``.

``variant`` picks the reference whose whole step is reproduced, shared update and heads:

* ``"libmtl"`` (default): the shared update is ``d`` as is and heads receive their
  ``w_t``-weighted loss gradient ``w_t ∇L_t``, as LibMTL, which back-propagates ``Σ_t w_t L_t``
  (with the weights detached) through the whole model.
* ``"official"``: the shared update is ``T·d`` ("to match the sum loss") with its norm clipped to
  1.0 (``clip_grad_norm_``'s coefficient), and heads receive their unweighted loss gradient
  ``∇L_t``, as the official code, which back-propagates each task loss alone to collect the
  per-task gradients (filling the heads' ``.grad`` unweighted) and then overwrites only the
  shared parameters' gradient.

When the solve fails, the heads of the ``"libmtl"`` variant are weighted by the fallback weights
that form the update. Host work: the ``T×T`` Gram matrix goes to the CPU (the one sync a CPU
solver needs); ``d`` is formed on the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import attrs
import numpy as np
import torch
from scipy.optimize import least_squares

from mtoframe import GramWeighting, StateSpec, StepContext, Weights
from mtoframe.gram_weighting import TaskState
from mtoframe.options import in_range, one_of
from mtoframe.solvers import nonzero_rows

RESIDUAL_TOL = 1e-3
OFFICIAL_MAX_NORM = 1.0


@attrs.frozen(kw_only=True)
class FairGradOptions:
    #: fairness exponent α > 0 (authors' runs: 2.0; their code's default 1.0 = Nash-MTL).
    alpha: float = attrs.field(default=2.0, validator=in_range(0.0, lo_open=True))
    #: "libmtl": d as is, heads w-weighted (LibMTL); "official": T·d clipped to norm 1.0, heads unweighted.
    variant: str = attrs.field(default="libmtl", validator=one_of(("libmtl", "official")))


def solve_fair_weights(kh: np.ndarray, alpha: float) -> tuple[np.ndarray | None, str]:
    """``ŵ > 0`` with ``K̂ŵ = ŵ^(−1/α)`` (``K̂`` normalised), or ``None`` and the reason."""
    T = kh.shape[0]
    p = 1.0 / alpha

    def residual(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = kh @ x - x ** (-p)
        return out

    def jacobian(x: np.ndarray) -> np.ndarray:
        return kh + np.diag(p * x ** (-p - 1.0))

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        try:
            res = least_squares(residual, np.full(T, 1.0 / T), jac=jacobian, bounds=(0.0, np.inf))
        except Exception as exc:  # reported to the caller, who falls back explicitly
            return None, f"{type(exc).__name__}: {exc}"
        x = res.x
        if res.status <= 0:
            return None, f"least_squares: {res.message}"
        if not (np.all(np.isfinite(x)) and np.all(x > 0)):
            return None, "non-finite or non-positive solution"
        target = x ** (-p)
        rel = float(np.linalg.norm(kh @ x - target) / np.linalg.norm(target))
    if not rel <= RESIDUAL_TOL:
        return None, f"no positive solution found (relative residual {rel:.3g})"
    return x, ""


class FairGrad(GramWeighting):
    __doc__ = __doc__
    name = "fairgrad"
    summary = "FairGrad: α-fair weights GGᵀw = w^(−1/α) by bounded least squares (α = 1 is Nash-MTL)."
    paper = "Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024, arXiv:2402.15638"
    defaults_reproduce = "α = 2.0 (authors' runs; their code defaults to 1.0); variant 'libmtl' (no ×T, no clipping)"
    Options = FairGradOptions
    heads_receive = ("variant 'libmtl': their w_t-weighted task gradients (LibMTL back-propagates Σ w_t L_t); "
                     "variant 'official': their unweighted task gradients (official code)")
    host = True
    fallback = "using the previous weights"
    #: the last solution of every task of the full task list (true units) and whether it ever
    #: came from a successful solve (1.0) or not (0.0)
    state_spec: ClassVar[Mapping[str, StateSpec]] = {"weights": StateSpec(init=0.0), "solved": StateSpec(init=0.0)}

    @property
    def scale_degree(self) -> float | None:
        # GGᵀw = w^(−1/α) gives w(cG) = c^(−2α/(α+1)) w(G), so d = wᵀG scales as c^((1−α)/(1+α));
        # the official variant's clipping keeps that law only where it is scale-free (α = 1)
        a = self.options.alpha
        if self.options.variant == "official" and a != 1.0:
            return None
        return float((1.0 - a) / (1.0 + a))

    @property
    def max_norm(self) -> float:
        return OFFICIAL_MAX_NORM if self.options.variant == "official" else 0.0

    @property
    def weights(self) -> np.ndarray | None:
        """The last solution of every task of the full task list (None before the first step)."""
        entry = self.state_entry("weights")
        return None if entry is None else entry.numpy()

    def coefficients(self, gram: np.ndarray, weights: np.ndarray, solved: np.ndarray) -> np.ndarray:
        """``u`` such that the update is ``uᵀG`` (before the official variant's clipping);
        ``weights`` and ``solved`` (the present tasks' state) are updated in place."""
        T = gram.shape[0]
        u = np.zeros(T)
        if not np.all(np.isfinite(gram)):
            self.failures.record("non-finite Gram matrix")
            return u
        live = nonzero_rows(gram)
        if not live.any():
            return u
        k = gram[np.ix_(live, live)]
        scale = float(np.linalg.norm(k))
        to_true = scale ** (-self.options.alpha / (self.options.alpha + 1.0))
        x, reason = solve_fair_weights(0.5 * (k + k.T) / scale, self.options.alpha)
        if x is not None:
            weights[live] = x * to_true
            solved[live] = 1.0
            u[live] = weights[live]
        else:
            self.failures.record(reason)
            start = np.full(int(live.sum()), 1.0 / int(live.sum())) * to_true
            u[live] = np.where(solved[live] > 0, weights[live], start)
        return u * T if self.options.variant == "official" else u

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> Weights:
        weights, solved = state["weights"], state["solved"]
        coef = torch.from_numpy(self.coefficients(gram.numpy(), weights.numpy(), solved.numpy()))
        state["weights"], state["solved"] = weights, solved
        return Weights(coef, coef if self.options.variant == "libmtl" else None)
