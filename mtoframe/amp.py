"""Mixed precision for the trainer: autocast and ``torch.amp.GradScaler`` around per-task gradients.

* The encoder, heads and task losses run under ``torch.autocast(dtype=amp)``; method hooks do not
  (their arithmetic — solvers, saliency statistics — stays in float32). Half-precision losses are
  cast to float32 before any method sees them.
* With a ``GradScaler``, gradients are taken of ``scale · L_t`` (so small per-task gradients do
  not underflow in float16), then **unscaled and cast to float32** before ``on_shared_grads``:
  solvers see the true ``G``. Saliency (``ctx.rep_grads``) is unscaled float32 too.
* The aggregated update is written back into ``.grad`` **times the scale** (an exact power of two),
  heads and regularisers are back-propagated from scaled objectives, and ``scaler.step`` /
  ``scaler.update`` do the rest: unscale, inf check, skip, scale growth/backoff.
* A non-finite scaled ``G`` is not aggregated (solvers would fail on it): the step is handed to
  the scaler as an overflow (``mark_overflow``), so it is skipped and the scale backed off exactly
  as GradScaler does for a non-finite ``.grad``. Skipped steps are counted in
  ``trainer.counters["amp_skipped_steps"]`` and logged as ``amp/skipped_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import OptionError

if TYPE_CHECKING:
    from .context import StepContext

HALF = (torch.float16, torch.bfloat16)


class MixedPrecision:
    """Autocast dtype and optional GradScaler of one trainer."""

    def __init__(self, dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None, device: torch.device) -> None:
        if dtype is not None and dtype not in HALF:
            raise OptionError(f"amp must be torch.bfloat16, torch.float16 or None, got {dtype!r}")
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise OptionError(f"grad_scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        self.dtype = dtype
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.device_type = device.type

    def autocast(self) -> AbstractContextManager[None]:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)  # type: ignore[arg-type]

    @staticmethod
    def float32(t: Tensor) -> Tensor:
        return t.float() if t.dtype in HALF else t

    def scale(self, t: Tensor) -> Tensor:
        """``scale · t`` (``t`` when there is no scaler); no host sync."""
        return self.scaler.scale(t) if self.scaler is not None else t

    def unscale(self, t: Tensor) -> Tensor:
        """``t / scale`` in at least float32 (a gradient taken of scaled losses)."""
        t = self.float32(t)
        if self.scaler is None:
            return t
        return t / self.scaler.scale(torch.ones((), dtype=t.dtype, device=t.device))

    def mark_overflow(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Make the coming ``scaler.step`` see a non-finite gradient (and so skip and back off)."""
        p = params[0]
        p.grad = torch.full_like(p, float("inf"))

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimiser step through the scaler; True when the scaler skipped it (non-finite grads)."""
        if self.scaler is None:
            optimizer.step()
            return False
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # update() only lowers the scale after an inf/NaN was found, i.e. after a skipped step
        return self.scaler.get_scale() < before

    def count_skip(self, ctx: StepContext, counters: dict[str, int]) -> None:
        """The scaler skipped this step (non-finite scaled gradients): count and log it."""
        ctx.skipped = True
        counters["amp_skipped_steps"] += 1
        ctx.log("amp/skipped_steps", float(counters["amp_skipped_steps"]))
        if ctx.logging and self.scaler is not None:
            ctx.log("amp/scale", self.scaler.get_scale())
