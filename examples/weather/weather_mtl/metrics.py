"""The problem's own metric, in mtoframe's metric protocol (directions, reset, update, compute)."""

from __future__ import annotations

import torch


class Brier:
    """Brier score of the rain probability (mean squared error of ``P(rain)``): lower is better."""

    def __init__(self) -> None:
        self.directions = {"brier": "lower"}
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        p = torch.softmax(logits, 1)[:, 1]
        self.total += float(((p - target.float()) ** 2).sum())
        self.count += len(target)

    def compute(self) -> dict[str, float]:
        return {"brier": self.total / max(self.count, 1)}
