"""Head-to-head step timing: interleaved rounds, robust statistics, peak memory.

Every contender (an mtoframe stack or a peer implementation) owns its own copy of the same
initial model and steps on the same batch. Each round runs every contender once, in a freshly
shuffled order, so drifts of the machine (thermal, other processes) hit all contenders alike
instead of whichever happened to run last.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import random
import threading
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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def _freed_memory_returned() -> Iterator[bool]:
    """glibc keeps freed blocks in its heap, so after the first step the RSS no longer grows
    and a delta reads ~0. For the memory pass, allocations of 64 KiB and more are served by
    mmap and freed to the system at once (``mallopt``), so the RSS follows the live tensors;
    afterwards the glibc default thresholds (128 KiB) are set back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024))
    except (OSError, AttributeError):
        yield False
        return
    try:
        yield ok
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def rss_available() -> bool:
    try:
        _rss_bytes()
    except OSError:
        return False
    return True


def peak_memory(step: Callable[[], Any], *, device: torch.device, repeats: int = 3) -> tuple[float, str]:
    """Peak extra memory of one step in MiB and how it was measured.

    CUDA: ``max_memory_allocated`` above what was allocated before the step (exact, tensors only).
    CPU: peak resident-set size above the size before the step, sampled every ~0.2 ms by a
    thread, with large blocks returned to the system on free (see
    :func:`_freed_memory_returned`); an estimate (sampling can miss a short peak, small blocks
    stay pooled); maximum over ``repeats`` steps.
    """
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
    if not rss_available():
        return math.nan, "unavailable (no /proc/self/statm)"
    with _freed_memory_returned() as returned:
        mib = _peak_rss_delta(step, repeats) / 2**20
    return mib, "cpu peak RSS delta (sampled" + (", glibc mmap threshold 64 KiB)" if returned else ")")


def _peak_rss_delta(step: Callable[[], Any], repeats: int) -> int:
    best = 0
    for _ in range(repeats):
        base = _rss_bytes()
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.0002)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            step()
        finally:
            done.set()
            th.join()
        peak[0] = max(peak[0], _rss_bytes())
        best = max(best, peak[0] - base)
    return best


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
