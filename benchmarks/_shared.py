"""What the benchmark scripts share: the small encoder-dominant conv model, its batch, and
interleaved timing (mtoframe.bench.timing) with ratios taken round by round and their intervals
(mtoframe.bench.stats, the statistics of ``mtoframe bench``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

import mtoframe
from mtoframe.bench.stats import Estimate, paired_ratio_ci
from mtoframe.bench.timing import Contender, run_interleaved

TASKS = ("a", "b", "c")


def conv_model(channels: int, *, tasks: Sequence[str] = TASKS, seed: int = 0) -> mtoframe.MultiTaskModel:
    """Four 3×3 conv + BatchNorm + ReLU layers as the encoder (most of the compute), a 1×1 conv
    head per task."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c_in = 3
    for _ in range(4):
        layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
        c_in = channels
    heads = {t: nn.Conv2d(channels, 1, 1) for t in tasks}
    return mtoframe.MultiTaskModel(encoder=nn.Sequential(*layers), heads=heads)


def conv_batch(batch: int, size: int, *, tasks: Sequence[str] = TASKS, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    return x, {t: torch.randn(batch, 1, size, size, generator=g) for t in tasks}


def step_times(steps: Mapping[str, Callable[[], Any]], *, rounds: int, repeat: int,
               warmup: int = 1) -> dict[str, list[float]]:
    """Per-step time (ms) of each contender in each of ``rounds`` interleaved, shuffled rounds;
    every timed call runs its step ``repeat`` times so that sub-millisecond jitter averages out."""
    calls = [Contender(n, lambda s=s: [s() for _ in range(repeat)]) for n, s in steps.items()]
    times = run_interleaved(calls, rounds=rounds, warmup=warmup)
    return {n: [t / repeat for t in v] for n, v in times.wall.items()}


def paired_ratio(times: Mapping[str, Sequence[float]], name: str, baseline: str) -> Estimate:
    """Median over rounds of ``name``'s time over ``baseline``'s in the same round, with its 95%
    bootstrap interval: on a machine whose speed drifts by tens of percent between seconds, the
    ratio of two medians taken from different moments is noisier than this."""
    return paired_ratio_ci(times[name], times[baseline])


def fmt(r: Estimate) -> str:
    """``1.234 [1.200, 1.270]``"""
    return f"{r.value:.3f}" + ("" if r.interval is None else f" [{r.low:.3f}, {r.high:.3f}]")


def rotating(fn: Callable[[torch.Tensor], object], gs: Sequence[torch.Tensor]) -> Callable[[], None]:
    """A step calling ``fn`` on the next matrix of ``gs`` (its own counter: every contender sees
    the same sequence), so that no contender times a matrix it has just left in cache."""
    state = {"i": 0}

    def step() -> None:
        fn(gs[state["i"] % len(gs)])
        state["i"] += 1

    return step
