"""Head-to-head step timing: interleaved rounds, robust statistics, peak memory.

Every contender (an mtoframe stack or a peer implementation) owns its own copy of the same
initial model and steps on the same batch. Each round runs every contender once, in a freshly
shuffled order, so drifts of the machine (thermal, other processes) hit all contenders alike
instead of whichever happened to run last.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch

from ..errors import MtoError


# -- statistics ----------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return quantile(xs, 0.5)


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default, ``torch.quantile``'s too)."""
    if not xs:
        raise MtoError("quantile of an empty sample")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def iqr(xs: Sequence[float]) -> float:
    return quantile(xs, 0.75) - quantile(xs, 0.25)


def block_mean(xs: Sequence[float], block: int) -> float:
    """Median of the means of consecutive, non-overlapping blocks of ``block`` samples.

    A method that does extra work every k-th step (Nash-MTL with ``update_weights_every=k``)
    has a per-step median that hides that work; the mean over a block of at least k steps
    carries it, and the median over blocks stays robust to a stray slow step. A trailing partial
    block is dropped; with fewer than ``block`` samples this is the plain mean.
    """
    if not xs:
        raise MtoError("block mean of an empty sample")
    if block < 1:
        raise MtoError(f"block must be >= 1, got {block}")
    n = len(xs) // block
    if n == 0:
        return sum(xs) / len(xs)
    return median([sum(xs[i * block:(i + 1) * block]) / block for i in range(n)])


def summarise_times(times_ms: Sequence[float], block: int) -> dict[str, float]:
    return {
        "median_ms": median(times_ms),
        "iqr_ms": iqr(times_ms),
        "q25_ms": quantile(times_ms, 0.25),
        "q75_ms": quantile(times_ms, 0.75),
        "block_mean_ms": block_mean(times_ms, block),
        "mean_ms": sum(times_ms) / len(times_ms),
        "min_ms": min(times_ms),
        "n": float(len(times_ms)),
    }


# -- contenders ----------------------------------------------------------------------------------


@attrs.define
class Contender:
    """Something that can take one training step: ``step()`` runs it on the shared batch.

    ``period`` is its longest state-update period in steps (1 when it does the same work every
    step); the block mean uses the largest period among all contenders.
    """

    name: str
    step: Callable[[], Any]
    period: int = 1
    kind: str = "mtoframe"
    info: dict[str, Any] = attrs.field(factory=dict)


def update_period(methods: Sequence[Any]) -> int:
    """Longest ``*_every`` integer option among the methods (e.g. Nash-MTL's
    ``update_weights_every``); 1 when there is none."""
    period = 1
    for m in methods:
        for a in attrs.fields(type(m.options)):
            v = getattr(m.options, a.name)
            if a.name.endswith("_every") and isinstance(v, int) and not isinstance(v, bool) and v > 1:
                period = max(period, v)
    return period


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_interleaved(contenders: Sequence[Contender], *, rounds: int, warmup: int, seed: int = 0,
                    device: torch.device | None = None,
                    on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Run ``warmup`` untimed and ``rounds`` timed rounds; return per-contender step times (ms)."""
    if rounds < 1:
        raise MtoError(f"rounds must be >= 1, got {rounds}")
    device = device or torch.device("cpu")
    order = list(contenders)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for c in order:
            _sync(device)
            t0 = time.perf_counter()
            c.step()
            _sync(device)
            if r >= warmup:
                times[c.name].append((time.perf_counter() - t0) * 1e3)
        if on_round is not None:
            on_round(r - warmup)
    return times


# -- memory --------------------------------------------------------------------------------------


def peak_memory(step: Callable[[], Any], *, device: torch.device, repeats: int = 3) -> tuple[float, str]:
    """Peak extra memory of one step in MiB (maximum over ``repeats`` steps) and how it was measured.

    CUDA: ``max_memory_allocated`` above what was allocated before the step.
    CPU: the step runs under ``torch.profiler`` with ``profile_memory=True``; the peak of the
    running sum of its tensor allocations and frees, in the order they happened. Both count
    tensor storage only, relative to the memory held before the step (a free of a tensor that
    existed before, e.g. a gradient set to None, lowers the running sum below zero). The
    process's RSS cannot serve on CPU: the allocator keeps freed blocks and reuses them, so
    after the first step the RSS hardly moves.
    """
    if repeats < 1:
        raise MtoError(f"repeats must be >= 1, got {repeats}")
    if device.type == "cuda":
        best = 0
        for _ in range(repeats):
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            best = max(best, torch.cuda.max_memory_allocated(device) - base)
        return best / 2**20, "cuda max_memory_allocated delta"
    # The first profiled step misses the frees of tensors allocated before profiling began (the
    # previous step's gradients, set to None in this one) and would read too high: discarded.
    # Collecting garbage first keeps frees of earlier steps' cyclic garbage out of the step.
    # c10 warns of those missed frees on stderr; the warning is about this discarded step.
    gc.collect()
    with _quiet_stderr_fd():
        cpu_allocations(step)
    peaks = []
    for _ in range(repeats):
        gc.collect()
        peaks.append(allocation_peak(cpu_allocations(step)))
    return max(peaks) / 2**20, "cpu profiler peak of live tensor bytes"


def cpu_allocations(fn: Callable[[], Any]) -> list[int]:
    """Signed sizes (bytes; negative = free) of the CPU tensor allocations made while ``fn``
    runs, in time order, as recorded by the PyTorch profiler.

    A free of a tensor allocated before the first profiled call is not seen."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr_fd():  # Kineto writes a line to fd 2 on every start and stop
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr_fd():
            prof.stop()
    # The public ``prof.events()`` folds an allocation made inside an op into that op's totals
    # and keeps only the unattributed ones as ``[memory]`` rows, which loses the order; the
    # event tree (what torch's own memory profiler reads) keeps every allocation with its time.
    events: list[tuple[int, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            events.append((e.start_time_ns, e.id, e.extra_fields.alloc_size))
        stack.extend(e.children)
    return [size for _, _, size in sorted(events)]


@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def allocation_peak(sizes: Sequence[int]) -> int:
    """Peak of the running sum of signed allocation sizes, from 0 (bytes; 0 when it never rises)."""
    live = peak = 0
    for s in sizes:
        live += s
        peak = max(peak, live)
    return peak


def environment(device: torch.device) -> dict[str, Any]:
    import platform

    from .. import __version__

    env: dict[str, Any] = {
        "mtoframe": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def ratios(stats: Mapping[str, Mapping[str, float]], baseline: str, key: str) -> dict[str, float]:
    base = stats[baseline][key]
    return {name: s[key] / base for name, s in stats.items()}
