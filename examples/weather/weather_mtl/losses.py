"""The problem's own losses: a focal loss for the rare-ish rain class and log-cosh for wind."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002): cross-entropy scaled by
    ``(1 - p_true)^gamma``, so confidently right days count less."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
        return (-(1.0 - logp.exp()) ** self.gamma * logp).mean()


def log_cosh(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Quadratic near 0, linear far out: robust to gusts; ``log cosh x = |x| + log(1 + e^{-2|x|}) - log 2``."""
    d = (prediction - target).abs()
    return (d + F.softplus(-2.0 * d) - torch.log(torch.tensor(2.0))).mean()
