"""GLS: geometric loss strategy (Chennupati et al., *MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning*, CVPR-W 2019,
https://arxiv.org/abs/1904.08492). Objective ``(Π_t L_t)^{1/T}`` (LibMTL's ``GLS``).

Its gradient is ``GLS/T · Σ_t ∇L_t / L_t``, so in the pipeline the losses are kept and the
weights are ``GLS / (T L_t)`` (detached; GLS computed as ``exp(mean log L)`` to avoid the
product's under/overflow). The single backward then equals the reference's gradient exactly, and
per-task rows seen by a gradient transform are the tasks' shares of it. ``T`` is the number of
tasks present in the batch. Heads receive their task's gradient weighted by ``GLS/(T L_t)``.
"""

from __future__ import annotations

from typing import Any

import torch

from mtoframe import LossWeighting, hookimpl


class GLS(LossWeighting):
    """Geometric mean of the losses; see the module docstring."""

    name = "gls"
    summary = "Geometric loss strategy: (Π L_t)^(1/T)."
    paper = "Chennupati et al., MultiNet++, CVPR Workshops 2019, arXiv 1904.08492"
    defaults_reproduce = "LibMTL"
    heads_receive = "their task's gradient weighted by GLS/(T·L_t)"

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        losses = ctx.losses.detach()
        gls = torch.exp(torch.log(losses).mean())
        ctx.weights = ctx.weights * (gls / (ctx.num_tasks * losses))
