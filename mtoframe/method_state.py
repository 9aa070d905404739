"""Helpers for a method's checkpointable state: the key check of ``load_state_dict`` and two
seeded random streams whose state is checkpointed (a torch generator for tensor draws, and the
random task orders of PCGrad and GradVac)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Set
from typing import Any

import torch
from torch import Tensor

__all__ = ["SeededGenerator", "SeededOrders", "expect_keys"]


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


#: Mersenne Twister state words in ``random.Random.getstate()`` (624 words and the position)
_MT_WORDS = 625


class SeededOrders:
    """Random orders of the other tasks, one per task, from a ``random.Random`` seeded by an
    option (LibMTL's PCGrad shuffles with Python's ``random`` too); its state goes into
    ``state_dict`` as an int64 tensor, so a resumed run draws what the uninterrupted one would
    have and ``torch.load(weights_only=True)`` reads it.

    Python's generator, not torch's: the orders are drawn right after ``G Gᵀ`` has swept the CPU
    caches, where every torch call costs several times its warm cost and a shuffle of a short
    list does not (part of what took PCGrad from 1.01–1.11× to 0.89–0.91× TorchJD's aggregation
    time at 3×1,000,000, ``benchmarks/aggregation_speed.py``; docs/BENCHMARKS.md)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)

    def reset(self) -> None:
        self.rng.seed(self.seed)

    def state(self) -> Tensor:
        version, words, gauss = self.rng.getstate()
        if version != 3 or len(words) != _MT_WORDS or gauss is not None:
            raise RuntimeError(f"unexpected random.Random state (version {version}, {len(words)} words)")
        return torch.tensor(words, dtype=torch.int64)

    def load(self, state: Tensor) -> None:
        if not isinstance(state, Tensor) or state.dtype != torch.int64 or tuple(state.shape) != (_MT_WORDS,):
            got = (f"{state.dtype} tensor of shape {tuple(state.shape)}" if isinstance(state, Tensor)
                   else type(state).__name__)
            raise ValueError(f"the order stream's state must be an int64 tensor of {_MT_WORDS} Mersenne Twister "
                             f"words, got a {got} (a torch.Generator state from a version before the orders came "
                             "from Python's random cannot be resumed)")
        self.rng.setstate((3, tuple(state.tolist()), None))

    def orders(self, T: int) -> list[list[int]]:
        """``T`` lists: list ``i`` is a random order of the tasks other than ``i``."""
        out = []
        for i in range(T):
            others = [j for j in range(T) if j != i]
            self.rng.shuffle(others)
            out.append(others)
        return out
