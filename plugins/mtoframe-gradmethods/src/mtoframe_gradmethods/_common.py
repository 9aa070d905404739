"""Small pieces shared by the methods of this distribution."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mtoframe.context import StepContext


class SeededGenerator:
    """A CPU ``torch.Generator`` seeded from an option, whose state goes into ``state_dict``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self.gen.manual_seed(self.seed)

    def state(self) -> Tensor:
        return self.gen.get_state()

    def load(self, state: Tensor) -> None:
        self.gen.set_state(state)

    def orders(self, T: int) -> Tensor:
        """``T×(T−1)`` LongTensor: row i is a random order of the tasks other than i."""
        rows = []
        for i in range(T):
            perm = torch.randperm(T - 1, generator=self.gen)
            rows.append(perm + (perm >= i).long())
        return torch.stack(rows) if rows else torch.zeros(0, 0, dtype=torch.long)


class FailureCounter:
    """Counts solver failures, warns once, logs ``solver/failures/<method>`` (never silent)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.count = 0
        self._warned = False

    def failed(self, ctx: StepContext, what: str) -> None:
        self.count += 1
        if not self._warned:
            warnings.warn(f"{self.method}: {what} (warned once; failures are counted in "
                          f"solver/failures/{self.method})", RuntimeWarning, stacklevel=3)
            self._warned = True
        ctx.log(f"solver/failures/{self.method}", float(self.count))

    def log(self, ctx: StepContext) -> None:
        if self.count:
            ctx.log(f"solver/failures/{self.method}", float(self.count))


def expect_keys(name: str, state: Mapping[str, Any], keys: set[str]) -> None:
    if set(state) != keys:
        raise ValueError(f"state of method {name!r} must have keys {sorted(keys)}, got {sorted(state)}")


def combine(weights: Tensor, grads: Tensor) -> Tensor:
    """``Σ_t w_t g_t`` in the gradients' dtype (weights may come from float64 T×T work)."""
    return weights.to(grads.dtype) @ grads
