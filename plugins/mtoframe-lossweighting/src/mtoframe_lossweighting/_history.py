"""Epoch-level loss vectors from the stats the trainer passes to ``on_epoch_end``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def epoch_losses(stats: Mapping[str, Any], tasks: Sequence[str]) -> Tensor:
    """Mean training loss of each task over the epoch (NaN for a task absent all epoch)."""
    means = stats["train_loss"]
    return torch.tensor([float(means.get(t, float("nan"))) for t in tasks], dtype=torch.float64)
