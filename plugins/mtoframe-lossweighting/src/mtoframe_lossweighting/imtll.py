"""IMTL-L: the loss-balancing half of Impartial Multi-Task Learning (Liu et al., *Towards
Impartial Multi-task Learning*, ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr).

Objective ``Σ_t e^{s_t} L_t − s_t`` with learnable scales ``s`` (init 0, as LibMTL's ``IMTL``):
at the optimum of each term ``e^{s_t} L_t = 1``, i.e. every scaled loss is held at the same
value. In the pipeline the weights are ``e^{s_t}`` (they require grad) and ``−Σ s_t`` is a
regulariser (``reg/imtll``) whose gradient reaches only ``s``.

``s`` lives in its own optimiser group without weight decay (``lr``: default the optimiser's).
Heads receive their task's gradient weighted by ``e^{s_t}``. IMTL-G, the gradient half, is in
the gradient-method plugin; the hybrid IMTL (LibMTL's ``IMTL``) is the stack
``["imtll", "imtlg"]``: the shared parameters get IMTL-G's aggregation of the rows
``e^{s_t} ∇L_t``, heads ``e^{s_t} ∇L_t`` and ``s`` the gradient of ``Σ_t e^{s_t} L_t − s_t``
(IMTL-G declares the hybrid; other aggregators that ignore loss weights still reject IMTL-L).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from mtoframe import hookimpl

from ._common import Learnable, optional_lr


@attrs.frozen(kw_only=True)
class IMTLLOptions:
    #: learning rate of the loss scales (None: the optimiser's).
    lr: float | None = attrs.field(default=None, validator=optional_lr())


class IMTLL(Learnable):
    """IMTL-L loss scaling; see the module docstring."""

    name = "imtll"
    summary = "IMTL-L: learnable loss scales s, loss Σ e^s L − s (scaled losses held equal)."
    paper = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021"
    defaults_reproduce = "LibMTL"
    Options = IMTLLOptions
    heads_receive = "their task's gradient weighted by e^s_t"
    init_value = 0.0

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        s = self.values(ctx)[ctx.task_ids].to(ctx.losses.dtype)
        ctx.weights = ctx.weights * torch.exp(s)
        ctx.add_loss("imtll", -s.sum())
