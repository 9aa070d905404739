"""UW: uncertainty weighting (Kendall, Gal, Cipolla, *Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics*, CVPR 2018, https://arxiv.org/abs/1705.07115).

Objective ``Σ_t L_t / (2 e^{s_t}) + s_t / 2`` with learnable log-variances ``s`` (init −0.5, as
LibMTL's ``UW``). For a fixed loss each term is minimised at ``s_t = log L_t``. In the pipeline
the weights are ``1 / (2 e^{s_t})`` (they require grad, so ``s`` learns from ``L_t``) and
``Σ s_t / 2`` is a regulariser (``reg/uw``) whose gradient reaches only ``s``.

``s`` lives in its own optimiser group without weight decay (learning rate ``lr``, default the
optimiser's, as LibMTL which puts ``s`` in the model's optimiser). Heads receive their task's
gradient weighted by ``1 / (2 e^{s_t})``. Partial labels: absent tasks' ``s`` get no gradient.
With an aggregator that sets ``head_weights`` the gradient of ``s`` is scaled by them too.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from mtoframe import hookimpl

from ._common import Learnable, optional_lr


@attrs.frozen(kw_only=True)
class UWOptions:
    #: learning rate of the log-variances (None: the optimiser's).
    lr: float | None = attrs.field(default=None, validator=optional_lr())


class UW(Learnable):
    """Uncertainty weighting; see the module docstring."""

    name = "uw"
    summary = "Uncertainty weighting: learnable log-variances s, loss Σ L/(2e^s) + s/2."
    paper = "Kendall et al., Multi-Task Learning Using Uncertainty to Weigh Losses, CVPR 2018, arXiv 1705.07115"
    defaults_reproduce = "Kendall et al. as LibMTL (s initialised to −0.5)"
    Options = UWOptions
    heads_receive = "their task's gradient weighted by 1/(2e^s_t)"
    init_value = -0.5

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        s = self.values(ctx)[ctx.task_ids].to(ctx.losses.dtype)
        ctx.weights = ctx.weights * (0.5 * torch.exp(-s))
        ctx.add_loss("uw", 0.5 * s.sum())
