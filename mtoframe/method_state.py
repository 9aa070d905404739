"""Helpers for a method's checkpointable state: the key check of ``load_state_dict`` and a
seeded random stream whose state is checkpointed."""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SeededGenerator", "expect_keys"]


def expect_keys(name: str, state: Mapping[str, Any], keys: Set[str]) -> None:
    """Raise :class:`ValueError` naming the expected keys unless ``state`` has exactly ``keys``
    (a checkpoint of another method or version must not load half-way)."""
    if set(state) != set(keys):
        raise ValueError(f"state of method {name!r} must have keys {sorted(keys)}, got {sorted(state)}")


class SeededGenerator:
    """A CPU ``torch.Generator`` seeded from an option; its state goes into ``state_dict`` so a
    resumed run draws what the uninterrupted one would have."""

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
        """``Tx(T-1)`` LongTensor: row i is a random order of the tasks other than i."""
        if T == 0:
            return torch.zeros(0, 0, dtype=torch.long)
        # one draw per row, in row order: the same stream as T calls of randperm(T - 1); the
        # integer arithmetic after the draws runs in numpy (exact either way, µs cheaper per step)
        perms = np.stack([torch.randperm(T - 1, generator=self.gen).numpy() for _ in range(T)])
        return torch.from_numpy(perms + (perms >= np.arange(T)[:, None]))
