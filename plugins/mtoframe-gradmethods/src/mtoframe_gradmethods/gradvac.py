"""GradVac: raise each task pair's gradient cosine towards an EMA target.

Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively
Multilingual Models", ICLR 2021 (https://openreview.net/forum?id=F1vEjWK-lH_). For every task
``i`` and every other task ``j`` in random order, per parameter group, with
``φ = cos(g_i^GV, g_j)`` and the target ``φ̂_ij``: if ``φ < φ̂_ij``::

    g_i^GV ← g_i^GV + ‖g_i^GV‖ (φ̂ √(1−φ²) − φ √(1−φ̂²)) / (‖g_j‖ √(1−φ̂²)) · g_j

and the target moves ``φ̂_ij ← (1−β) φ̂_ij + β φ``; ``d = Σ_i g_i^GV``. Targets start at 0.

Options: ``beta`` = 0.5; ``ema_update``: ``"conflict"`` moves the target only when the pair
was adjusted (LibMTL, default) or ``"always"`` after every visited pair (the paper's
Algorithm 1); ``groups``: ``"whole"`` (one group: LibMTL ``group_type=0``), ``"layer"`` (one per
encoder module owning parameters: ``group_type=1``) or ``"parameter"`` (one per shared parameter
tensor: ``group_type=2``). The layer and parameter groupings need the trainer's model (they are
read in ``on_train_start``); ``mtoframe.aggregate`` supports ``"whole"``. Denominators carry
LibMTL's ``+1e-8``. Each row stays a combination of the original rows, so the work runs on each
group's ``T×T`` Gram matrix and the ``T×D`` matrix is touched once (a transform).

State: targets ``φ̂`` (``T_all×T_all×groups``, indexed by the trainer's task ids so partial labels
keep their pairs) and the random orders' stream (:class:`mtoframe.SeededOrders`). Heads receive their
unweighted loss gradient (LibMTL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor, nn

from mtoframe import GramWeighting, Role, SeededOrders, StateSpec, StepContext, hookimpl
from mtoframe.errors import MtoError
from mtoframe.gram_weighting import TaskState
from mtoframe.options import in_range, integer, one_of


@attrs.frozen(kw_only=True)
class GradVacOptions:
    beta: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    ema_update: str = attrs.field(default="conflict", validator=one_of(("conflict", "always")))
    groups: str = attrs.field(default="whole", validator=one_of(("whole", "layer", "parameter")))
    seed: int = attrs.field(default=0, validator=integer(0))


_EPS = 1e-8


def group_sizes(encoder: nn.Module, shared: list[nn.Parameter], groups: str) -> list[int]:
    """Sizes of consecutive column blocks of the flattened shared gradient."""
    if groups == "parameter":
        return [p.numel() for p in shared]
    ids = {id(p) for p in shared}
    sizes = []
    for module in encoder.modules():
        if not module._modules and any(True for _ in module.parameters(recurse=False)):
            n = sum(p.numel() for p in module.parameters(recurse=False) if id(p) in ids)
            if n:
                sizes.append(n)
    if sum(sizes) != sum(p.numel() for p in shared):
        raise MtoError("gradvac: groups='layer' needs every shared parameter to belong to a leaf module "
                       "of the encoder; use groups='parameter'")
    return sizes


class GradVac(GramWeighting):
    __doc__ = __doc__
    name = "gradvac"
    summary = "GradVac: move each task pair's gradient cosine up to an EMA target (per parameter group)."
    paper = "Wang et al., Gradient Vaccine, ICLR 2021"
    defaults_reproduce = "LibMTL (β = 0.5, EMA moved on conflicts, one group for the whole model)"
    Options = GradVacOptions
    roles = Role.TRANSFORM
    heads_receive = "their unweighted loss gradient"
    #: cosine targets φ̂ per ordered task pair and parameter group
    state_spec: ClassVar[Mapping[str, StateSpec]] = {"rho": StateSpec(init=0.0, pairwise=True, per_block=True)}

    @property
    def scale_degree(self) -> float | None:
        # targets and EMA are cosines (scale-free); the corrections scale with G
        return 1.0

    def __init__(self, options: GradVacOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        #: widths of the parameter groups (configuration from the model, not state)
        self.sizes: list[int] | None = None

    def reset(self) -> None:
        super().reset()
        self.rng = SeededOrders(self.options.seed)
        self._orders: Tensor | None = None

    @property
    def rho(self) -> Tensor | None:
        """The cosine targets ``T_all×T_all×groups`` (None before the first step)."""
        return None if self.task_state is None else self.task_state["rho"]

    @hookimpl
    def on_train_start(self, trainer: Any) -> None:
        if self.options.groups != "whole":
            self.sizes = group_sizes(trainer.model.encoder, trainer.model.shared_parameters(), self.options.groups)

    def column_blocks(self, ctx: StepContext) -> list[int] | None:
        if self.options.groups == "whole":
            return None
        if self.sizes is None or sum(self.sizes) != ctx.grads.shape[1]:
            raise MtoError(f"gradvac: groups={self.options.groups!r} needs a Trainer (the grouping comes from "
                           "the model); mtoframe.aggregate supports groups='whole'")
        return self.sizes

    def weigh(self, gram: Tensor, state: TaskState, ctx: StepContext) -> Tensor:
        if state.block == 0 or self._orders is None:  # one order per step, shared by the groups
            T = gram.shape[0]
            self._orders = torch.tensor(self.rng.orders(T), dtype=torch.long).reshape(T, max(T - 1, 0)).to(gram.device)
        rho = state["rho"]
        C, moved = self._vaccinate(gram, rho, self._orders)
        # non-finite gradients reach this step's update (the trainer skips it or raises) but not
        # the targets, which would stay NaN: decided on the device, no host sync
        state["rho"] = torch.where(torch.isfinite(gram).all(), moved, rho)
        return C

    def _vaccinate(self, K: Tensor, rho: Tensor, orders: Tensor) -> tuple[Tensor, Tensor]:
        T = K.shape[0]
        beta, always = self.options.beta, self.options.ema_update == "always"
        C = torch.eye(T, dtype=K.dtype, device=K.device)
        rows = torch.arange(T, device=K.device)
        norm_j = K.diagonal().clamp_min(0).sqrt()
        rho = rho.clone()
        for step in range(orders.shape[1]):
            j = orders[:, step]
            CK = C @ K
            norm_i = (CK * C).sum(1).clamp_min(0).sqrt()  # ‖g_i^GV‖ from the coefficients
            phi = CK[rows, j] / (norm_i * norm_j[j] + _EPS)
            target = rho[rows, j]
            low = phi < target
            w = norm_i * (target * (1 - phi**2).clamp_min(0).sqrt() - phi * (1 - target**2).clamp_min(0).sqrt()) / (
                norm_j[j] * (1 - target**2).clamp_min(0).sqrt() + _EPS)
            C[rows, j] += torch.where(low, w, torch.zeros_like(w))
            moved = (1 - beta) * target + beta * phi
            rho[rows, j] = torch.where(low | always, moved, target)
        return C, rho

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.rng.state()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.rng.load(state["generator"])
