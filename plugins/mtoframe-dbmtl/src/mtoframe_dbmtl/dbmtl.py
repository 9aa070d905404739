"""DB-MTL: dual balancing of loss scales (log) and gradient magnitudes (EMA, max norm).

Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029
(https://arxiv.org/abs/2308.12029); defaults and recursion as LibMTL's ``DB_MTL``:

* loss-scale balancing (``log_transform=True``): ``on_task_losses`` replaces every loss by
  ``log(L_t + 1e-8)``, so the per-task gradients and the heads are those of the log-losses;
* gradient-magnitude balancing (``balance_magnitude=True``): per task an EMA of its gradient,
  ``ĝ_t ← β_k ĝ_t + (1 − β_k) g_t`` with ``β_k = beta / k^beta_sigma`` (``k`` = 1, 2, … counts
  the aggregations; ``ĝ`` starts at 0), and the update
  ``d = max_t ‖ĝ_t‖ · Σ_t ĝ_t / (‖ĝ_t‖ + 1e-8)``.

Defaults ``beta = 0.9``, ``beta_sigma = 0`` (LibMTL's defaults). Switching one half off gives the
paper's ablations: ``balance_magnitude=False`` is log-only (the sum of the log-losses, trained
with a single backward: no per-task gradients are computed); ``log_transform=False`` is
magnitude-only (EMA balancing of the raw losses' gradients).

Works on the shared-parameter gradients. Under partial labels the EMA is kept per task of the
trainer's task list (``ctx.task_ids``); only present tasks are updated and enter the max and the
sum. State: ``k`` and the ``T_all × P`` EMA buffer. Heads receive the gradient of
``log(L_t + 1e-8)`` (of ``L_t`` when ``log_transform=False``), unscaled (LibMTL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from mtoframe import Method, Role, hookimpl
from mtoframe.context import StepContext
from mtoframe.errors import OptionError
from mtoframe.method import Space
from mtoframe.options import boolean, in_range

EPS = 1e-8


@attrs.frozen(kw_only=True)
class DBMTLOptions:
    beta: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0))
    beta_sigma: float = attrs.field(default=0.0, validator=in_range(0.0, 10.0))
    log_transform: bool = attrs.field(default=True, validator=boolean())
    balance_magnitude: bool = attrs.field(default=True, validator=boolean())

    def __attrs_post_init__(self) -> None:
        if not (self.log_transform or self.balance_magnitude):
            raise OptionError("options 'log_transform' and 'balance_magnitude' of dbmtl are both False: "
                              "that is EW; keep at least one True")


class DBMTL(Method):
    __doc__ = __doc__
    name = "dbmtl"
    summary = "DB-MTL: log-loss scale balancing + EMA gradient-magnitude balancing (max norm)."
    paper = "Lin et al., Dual-Balancing for Multi-Task Learning, arXiv 2308.12029"
    defaults_reproduce = "LibMTL's DB_MTL (β = 0.9, σ = 0, log(L + 1e-8))"
    Options = DBMTLOptions
    roles = Role.LOSS | Role.AGGREGATOR
    ignores_loss_weights = "DB-MTL normalises every task's gradient and log-transforms the losses itself"
    heads_receive = "the unscaled gradient of log(L_t + 1e-8) (of L_t with log_transform=False)"

    @property
    def scale_degree(self) -> float | None:
        # max_t‖ĝ_t‖ · Σ ĝ_t/‖ĝ_t‖ scales with G (up to the reference's +1e-8)
        return 1.0

    def __init__(self, options: DBMTLOptions | None = None, /, **kwargs: object) -> None:
        super().__init__(options, **kwargs)
        self.k = 0
        self.buffer: Tensor | None = None

    @property
    def grad_space(self) -> Space | None:
        # log-only needs no per-task gradients: the trainer then does one backward
        return "params" if self.options.balance_magnitude else None

    @hookimpl
    def on_task_losses(self, ctx: StepContext) -> None:
        if self.options.log_transform:
            ctx.losses = torch.log(ctx.losses + EPS)

    @hookimpl
    def on_shared_grads(self, ctx: StepContext) -> None:
        if not self.options.balance_magnitude:
            return
        g = ctx.grads
        if self.buffer is None or self.buffer.shape != (len(ctx.all_tasks), g.shape[1]):
            # first use, or a different task list / parameter count: an EMA of other gradients
            # would be meaningless, so the recursion starts again (ĝ = 0, k = 1)
            self.buffer = torch.zeros(len(ctx.all_tasks), g.shape[1], dtype=g.dtype, device=g.device)
            self.k = 0
        self.k += 1
        beta_k = self.options.beta / self.k**self.options.beta_sigma
        every = len(ctx.tasks) == len(ctx.all_tasks)
        ids = ctx.task_ids.to(g.device)
        old = self.buffer if every else self.buffer[ids]
        ema = torch.lerp(old, g, 1.0 - beta_k)  # β_k ĝ + (1 − β_k) g
        # Non-finite gradients reach this step's update, so the trainer skips the step (or
        # raises), but not the stored EMA, which would otherwise stay NaN for every later step:
        # a skipped step leaves it as it was. Decided on the device, so with no host sync (which
        # is also why k still counts the step).
        if every:
            torch.where(ctx.grads_finite(), ema, old, out=old)
        else:
            self.buffer[ids] = torch.where(ctx.grads_finite(), ema, old)
        norms = torch.linalg.vector_norm(ema, dim=1)
        scale = norms.max() / (norms + EPS)
        ctx.set_update(scale @ ema)
        if ctx.logging:
            for t, name in enumerate(ctx.tasks):
                ctx.log(f"dbmtl/scale/{name}", scale[t])

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"k": self.k}
        if self.buffer is not None:
            state["buffer"] = self.buffer.clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        allowed = {"k", "buffer"}
        if "k" not in state or set(state) - allowed:
            raise ValueError(f"state of method 'dbmtl' must have keys 'k' and optionally 'buffer', got {sorted(state)}")
        self.k = int(state["k"])
        self.buffer = state["buffer"].clone() if "buffer" in state else None

    def reset(self) -> None:
        self.k = 0
        self.buffer = None
