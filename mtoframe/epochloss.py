"""The epoch's mean raw loss per task: ``stats["train_loss"]`` of ``on_epoch_end`` (DWA, STCH and
GradNorm read it), for the Trainer's ``fit`` and for loops that drive a Stack (Lightning)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .context import StepContext


class EpochLosses:
    """Sums and counts of each task's raw loss over an epoch's steps, kept on the device so the
    host reads them once, at the epoch's end, not every step."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self.sums: Tensor | None = None
        self.counts: Tensor | None = None

    def add(self, ctx: StepContext) -> None:
        """Count the step's raw losses (a task absent from the batch is not counted)."""
        if ctx.raw_losses is None:
            return
        raw = ctx.raw_losses.detach().double()
        if self.sums is None or self.counts is None:
            self.sums = torch.zeros(len(self.tasks), dtype=torch.float64, device=raw.device)
            self.counts = torch.zeros_like(self.sums)
        self.sums.index_add_(0, ctx.task_ids, raw)
        self.counts.index_add_(0, ctx.task_ids, torch.ones_like(raw))

    def means(self) -> dict[str, float]:
        """``{task: mean raw loss}`` of the tasks seen since the last :meth:`reset`."""
        if self.sums is None or self.counts is None:
            return {}
        means, seen = (self.sums / self.counts.clamp_min(1)).tolist(), (self.counts > 0).tolist()
        return {t: means[i] for i, t in enumerate(self.tasks) if seen[i]}

    def reset(self) -> None:
        self.sums = self.counts = None

    def apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Move the sums with their module (``fn`` as in ``nn.Module._apply``); they stay float64."""
        if self.sums is not None and self.counts is not None:
            self.sums, self.counts = fn(self.sums).double(), fn(self.counts).double()

    def state_dict(self) -> dict[str, Any]:
        return {"sums": None if self.sums is None else self.sums.clone(),
                "counts": None if self.counts is None else self.counts.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums, self.counts = state["sums"], state["counts"]
