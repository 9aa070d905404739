"""STCH: smooth Tchebycheff scalarisation (Lin et al., *Smooth Tchebycheff Scalarization for
Multi-Objective Optimization*, ICML 2024, https://arxiv.org/abs/2402.19078).

Schedule of LibMTL's ``STCH`` (taken from the official STCH_MTL code), with ``warmup_epochs = 4``
and ``mu = 1``:

* epochs ``< warmup_epochs`` and the epoch ``== warmup_epochs``: objective ``Σ_t log(L_t + 1e-20)``;
* at the end of epoch ``warmup_epochs`` the nadir ``n_t`` is the mean of ``L_t`` over that
  epoch's batches (the ``train_loss`` stat of ``on_epoch_end``, which is what the reference
  averages);
* afterwards ``T · μ · log Σ_t exp(ℓ_t / μ)`` with ``ℓ_t = log(L_t / n_t + 1e-20)``.

In the pipeline the losses become ``ℓ_t`` (or ``log L_t`` during warm-up) and the weights
``T · softmax(ℓ / μ)`` (detached): by the chain rule this is exactly the reference's gradient,
and per-task rows seen by a gradient method are each task's share of it. ``T`` is the number of
present tasks. The nadir is in ``state_dict``. Heads receive the gradient of their ``ℓ_t``
weighted by ``T · softmax(ℓ/μ)_t``. Epochs are the trainer's (``Trainer.fit``); after the warm-up
a step without a recorded nadir raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from mtoframe import LossWeighting, hookimpl
from mtoframe.errors import MtoError
from mtoframe.options import in_range, integer

from ._history import epoch_losses

TINY = 1e-20


@attrs.frozen(kw_only=True)
class STCHOptions:
    #: smoothing parameter of the Tchebycheff max.
    mu: float = attrs.field(default=1.0, validator=in_range(0.0, lo_open=True))
    #: epochs of log-loss warm-up; the nadir is the mean loss of the epoch with this index.
    warmup_epochs: int = attrs.field(default=4, validator=integer(0))


class STCH(LossWeighting):
    """Smooth Tchebycheff scalarisation; see the module docstring."""

    name = "stch"
    summary = "Smooth Tchebycheff: T·μ·logsumexp(log(L/nadir)/μ) after a log-loss warm-up."
    paper = "Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024"
    defaults_reproduce = "LibMTL (μ = 1, 4 warm-up epochs)"
    Options = STCHOptions
    heads_receive = "the gradient of log(L_t/nadir_t) weighted by T·softmax(ℓ/μ)_t (log L_t during warm-up)"

    def reset(self) -> None:
        self.nadir: Tensor | None = None

    @hookimpl
    def on_epoch_end(self, trainer: Any, epoch: int, stats: Mapping[str, Any]) -> None:
        if epoch == self.options.warmup_epochs:
            self.nadir = epoch_losses(stats, trainer.task_names)

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        losses = ctx.losses
        if ctx.epoch <= self.options.warmup_epochs:
            ctx.losses = torch.log(losses + TINY)
            return
        if self.nadir is None:
            raise MtoError(
                f"stch has no nadir at epoch {ctx.epoch}: it is the mean loss of epoch {self.options.warmup_epochs}, "
                "recorded by Trainer.fit's on_epoch_end (or restored with load_state_dict)"
            )
        nadir = self.nadir.to(device=losses.device, dtype=losses.dtype)[ctx.task_ids]
        ell = torch.log(losses / nadir + TINY)
        ctx.losses = ell
        ctx.weights = ctx.weights * (ctx.num_tasks * torch.softmax(ell.detach() / self.options.mu, dim=0))

    def state_dict(self) -> dict[str, Any]:
        return {} if self.nadir is None else {"nadir": self.nadir.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.nadir = state["nadir"].clone() if "nadir" in state else None
