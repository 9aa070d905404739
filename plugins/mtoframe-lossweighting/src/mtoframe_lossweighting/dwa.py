"""DWA: dynamic weight average (Liu, Johns, Davison, *End-to-End Multi-Task Learning with
Attention*, CVPR 2019, https://arxiv.org/abs/1803.10704).

``w = T · softmax(r / temperature)`` with ``r_t = L̄_t(e−1) / L̄_t(e−2)``, the ratio of the task's
mean training loss over the last two epochs (``temperature = 2``). During the first two epochs
``w = 1``. This is LibMTL's ``DWA`` (and the MTAN code), which reads the epoch means of the
unweighted losses; here they come from the ``train_loss`` stats of ``on_epoch_end``, so the
method keeps the last two loss vectors itself (they are in ``state_dict``).

Partial labels: a task absent during one of the two epochs gets ``r = 1``; ``T`` is the number of
tasks of the trainer, and each step uses the present tasks' entries. Heads receive their task's
gradient weighted by ``w_t``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from mtoframe import LossWeighting, hookimpl
from mtoframe.options import in_range

from ._history import epoch_losses


@attrs.frozen(kw_only=True)
class DWAOptions:
    #: softmax temperature of the loss ratios.
    temperature: float = attrs.field(default=2.0, validator=in_range(0.0, lo_open=True))


class DWA(LossWeighting):
    """Dynamic weight average; see the module docstring."""

    name = "dwa"
    summary = "Dynamic weight average: T·softmax(r/2) of the last two epochs' loss ratios."
    paper = "Liu et al., End-to-End Multi-Task Learning with Attention, CVPR 2019, arXiv 1803.10704"
    defaults_reproduce = "paper and LibMTL (temperature 2, weights 1 for the first two epochs)"
    Options = DWAOptions
    heads_receive = "their task's gradient weighted by w_t"

    def reset(self) -> None:
        self.epoch_means: list[Tensor] = []  # the last two epochs' mean losses
        self.current: Tensor | None = None  # weights over all tasks, None: all ones

    def _update(self) -> None:
        if len(self.epoch_means) < 2:
            self.current = None
            return
        ratio = self.epoch_means[-1] / self.epoch_means[-2]
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        self.current = len(ratio) * torch.softmax(ratio / self.options.temperature, dim=0)

    @hookimpl
    def on_epoch_end(self, trainer: Any, epoch: int, stats: Mapping[str, Any]) -> None:
        self.epoch_means = [*self.epoch_means, epoch_losses(stats, trainer.task_names)][-2:]
        self._update()

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        if self.current is not None:
            w = self.current.to(device=ctx.losses.device, dtype=ctx.losses.dtype)
            ctx.weights = ctx.weights * w[ctx.task_ids]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_means": [m.clone() for m in self.epoch_means]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch_means = [m.clone() for m in state["epoch_means"]]
        self._update()
