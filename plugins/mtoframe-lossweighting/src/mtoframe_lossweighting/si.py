"""SI / log: scale-invariant loss ``Σ_t log(L_t + eps)`` (as in Navon et al.'s Nash-MTL and
Liu et al.'s FAMO comparisons; METHODS.md "SI/log").

The losses are replaced by their logarithm, so the per-task gradient is ``∇L_t / (L_t + eps)``
and any constant rescaling of a task's loss leaves the update unchanged. ``eps = 0`` (default)
is the literal formula: a zero loss gives ``−inf``, which the trainer's non-finite policy reports
by task and step. Heads receive the gradient of ``log(L_t + eps)``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from mtoframe import LossWeighting, hookimpl
from mtoframe.options import in_range


@attrs.frozen(kw_only=True)
class SIOptions:
    #: added to each loss inside the logarithm.
    eps: float = attrs.field(default=0.0, validator=in_range(0.0))


class SI(LossWeighting):
    """Sum of log-losses; see the module docstring."""

    name = "si"
    summary = "Scale-invariant loss: Σ log(L_t + eps)."
    paper = "scale-invariant baseline (Navon et al., Nash-MTL, ICML 2022; Liu et al., FAMO, NeurIPS 2023)"
    defaults_reproduce = "LibMTL (Σ log L_t)"
    Options = SIOptions
    heads_receive = "the gradient of log(L_t + eps)"

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        ctx.losses = torch.log(ctx.losses + self.options.eps)
