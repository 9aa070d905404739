"""ExcessMTL (He, Zhou, Zhao, *Robust Multi-Task Learning with Excess Risks*, ICML 2024,
https://arxiv.org/abs/2402.02009; official code https://github.com/yifei-he/ExcessMTL).

Weights tasks by their estimated *excess* risk (loss above the task's achievable minimum)
instead of their raw loss, so noisy tasks with a high irreducible loss do not dominate. The
excess risk of task t is estimated by a second-order expansion with an AdaGrad-style diagonal
curvature: ``e_t = g_tᵀ diag(1 / sqrt(H_t + 1e-7)) g_t`` with ``H_t = Σ_{steps} g_t ⊙ g_t``
(accumulated squared gradients). The first step only records ``e_t(0)``; afterwards the weights
take an exponentiated-gradient step on the normalised estimate and are renormalised to sum to T:

    λ_t ← λ_t · exp(step_size · e_t / e_t(0)),    λ ← T · λ / Σ λ.

The update is ``Σ_t λ_t g_t`` and heads receive their task's gradient weighted by ``λ_t`` (the
reference back-propagates ``Σ λ_t L_t``). ``step_size = 1e-2`` is the official code's and
LibMTL's ``robust_step_size`` default.

It reads per-task gradients of the shared parameters, so it is a gradient-level method: an
**aggregator** (parameter space, as the reference's default; must come last, may follow gradient
transforms). It carries ``T×P`` state (``H``) like the reference. It is a task-weighting scheme
itself, so stacking it with a loss-level method is rejected. Partial labels: each task's
``H``, ``e_t(0)`` and ``λ_t`` are indexed by its position in the trainer's task list; ``e_t(0)``
is recorded the first time the task is present with a non-zero gradient (the reference divides
by a zero ``e(0)`` and turns every weight into NaN); the renormalisation runs over all tasks.
State (``H``, ``e(0)``, ``λ``) is in ``state_dict`` and built lazily, so ``mtoframe.aggregate``
works on a bare matrix (a matrix of another shape there starts fresh state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from mtoframe import Method, Role, hookimpl
from mtoframe.errors import StackError
from mtoframe.options import in_range

EPS = 1e-7


@attrs.frozen(kw_only=True)
class ExcessMTLOptions:
    #: step size of the exponentiated-gradient update of the weights (robust_step_size).
    step_size: float = attrs.field(default=1e-2, validator=in_range(0.0))


class ExcessMTL(Method):
    """ExcessMTL aggregator; see the module docstring."""

    name = "excessmtl"
    summary = "ExcessMTL: weights from AdaGrad-estimated excess risks, exponentiated-gradient updates."
    paper = "He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024, arXiv 2402.02009"
    defaults_reproduce = "official code and LibMTL (step_size 1e-2)"
    Options = ExcessMTLOptions
    roles = Role.AGGREGATOR
    ignores_loss_weights = "ExcessMTL sets its own task weights"
    heads_receive = "their task's gradient weighted by λ_t (as the reference)"

    @property
    def scale_degree(self) -> float | None:
        # the excess-risk ratios e_t/e_t(0) are scale-free (up to the reference's +1e-7); d = λᵀG
        return 1.0

    def reset(self) -> None:
        self.sq_sum: Tensor | None = None
        self.initial: Tensor | None = None
        self.weights: Tensor | None = None

    def check_stack(self, stack: Sequence[Method]) -> None:
        names = [m.name for m in stack]
        for other in stack:
            if other is not self and other.roles & Role.LOSS:
                raise StackError(
                    f"excessmtl cannot follow the loss-level method {other.name!r} in {names}: ExcessMTL sets its "
                    "own task weights, and pre-weighted gradients would corrupt its excess-risk estimates"
                )

    def _ensure(self, num_tasks: int, grads: Tensor) -> None:
        if self.sq_sum is not None and self.sq_sum.shape != (num_tasks, grads.shape[1]):
            # only bare aggregate() calls can change the problem size; a trainer's is fixed
            self.reset()
        if self.sq_sum is None:
            self.sq_sum = torch.zeros(num_tasks, grads.shape[1], dtype=grads.dtype, device=grads.device)
            self.initial = torch.full((num_tasks,), float("nan"), dtype=grads.dtype, device=grads.device)
            self.weights = torch.ones(num_tasks, dtype=grads.dtype, device=grads.device)

    @hookimpl
    def on_shared_grads(self, ctx: Any) -> None:
        grads = ctx.grads
        self._ensure(len(ctx.all_tasks), grads)
        assert self.sq_sum is not None and self.initial is not None and self.weights is not None
        ids = ctx.task_ids
        old_sq, initial, old_weights = self.sq_sum[ids], self.initial[ids], self.weights
        sq = old_sq + grads * grads
        excess = (grads * grads / torch.sqrt(sq + EPS)).sum(dim=1)
        known = ~torch.isnan(initial)
        # e(0) must be positive to normalise by: a task whose gradient is still zero waits
        new_initial = torch.where(~known & (excess > 0), excess, initial)
        ratio = torch.where(known, excess / torch.where(known, initial, torch.ones_like(initial)), torch.zeros_like(excess))
        stepped = old_weights[ids] * torch.exp(self.options.step_size * ratio)
        weights = old_weights.clone()
        weights[ids] = torch.where(known, stepped, weights[ids])
        weights = len(weights) * weights / weights.sum()
        # Non-finite gradients reach this step's update (the trainer skips it or raises) but not
        # the accumulators, which would stay NaN: decided on the device, no host sync.
        ok = ctx.grads_finite()
        self.sq_sum[ids] = torch.where(ok, sq, old_sq)
        self.initial[ids] = torch.where(ok, new_initial, initial)
        self.weights = torch.where(ok, weights, old_weights)
        lam = weights[ids]
        ctx.set_update(lam @ grads, head_weights=lam)
        if ctx.logging:
            for t, v in zip(ctx.tasks, lam):
                ctx.log(f"excessmtl/weight/{t}", v)

    def state_dict(self) -> dict[str, Any]:
        if self.sq_sum is None:
            return {}
        return {"sq_sum": self.sq_sum.clone(), "initial": self.initial.clone(), "weights": self.weights.clone()}  # type: ignore[union-attr]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        if state:
            self.sq_sum = state["sq_sum"].clone()
            self.initial = state["initial"].clone()
            self.weights = state["weights"].clone()
