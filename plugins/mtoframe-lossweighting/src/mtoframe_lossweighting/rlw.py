"""RLW: random loss weighting (Lin et al., *Reasonable Effectiveness of Random Weighting: A
Litmus Test for Multi-Task Learning*, TMLR 2022, https://arxiv.org/abs/2111.10603).

Every step draws ``λ ~ N(0, I)`` and weights the losses by ``softmax(λ)`` (LibMTL's ``RLW``,
the paper's default distribution; the weights sum to 1). The draw comes from the method's own
CPU ``torch.Generator`` whose state is in ``state_dict``, so a resumed run draws the same
weights. ``seed=None`` (default) seeds it from torch's global generator at construction, so
``torch.manual_seed`` controls it; an integer fixes it.

Partial labels: one normal per task of the trainer is drawn every step (the stream does not
depend on which tasks are present) and the softmax runs over the present tasks. Heads receive
their task's gradient weighted by the drawn weight.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from mtoframe import LossWeighting, hookimpl
from mtoframe.options import integer


@attrs.frozen(kw_only=True)
class RLWOptions:
    #: seed of the method's generator (None: drawn from torch's global generator).
    seed: int | None = attrs.field(default=None, validator=attrs.validators.optional(integer(0, 2**63 - 1)))


class RLW(LossWeighting):
    """Random loss weighting; see the module docstring."""

    name = "rlw"
    summary = "Random loss weighting: softmax of a fresh N(0, I) draw each step."
    paper = "Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022, arXiv 2111.10603"
    defaults_reproduce = "LibMTL (softmax of N(0, I) each step)"
    Options = RLWOptions
    heads_receive = "their task's gradient weighted by the drawn weight"

    @functools.cached_property
    def _seed(self) -> int:
        # drawn once per instance when no seed is given, so reset() replays the same stream
        seed = self.options.seed
        return int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)

    def reset(self) -> None:
        self.generator = torch.Generator().manual_seed(self._seed)

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        draw = torch.randn(len(ctx.all_tasks), generator=self.generator, dtype=torch.float64)
        lam = draw.to(device=ctx.losses.device, dtype=ctx.losses.dtype, non_blocking=True)[ctx.task_ids]
        ctx.weights = ctx.weights * torch.softmax(lam, dim=0)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
