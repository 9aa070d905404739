"""Head-to-head step timing: interleaved rounds of wall and CPU time, peak memory.

Every contender (an mtoframe stack or a peer implementation) owns its own copy of the same
initial model and steps on the same batch. Each round runs every contender once, in a freshly
shuffled order, so drifts of the machine (thermal, other processes) hit all contenders alike
instead of whichever happened to run last. The statistics of the rounds are in
:mod:`mtoframe.bench.stats`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import torch

from ..errors import MtoError

# -- contenders ----------------------------------------------------------------------------------


@attrs.define
class Contender:
    """Something that can take one training step: ``step()`` runs it on the shared batch.

    ``period`` is its longest state-update period in steps (1 when it does the same work every
    step). Each timed round runs ``period`` consecutive steps of it and records their mean, so
    work done every k-th step (Nash-MTL's ``update_weights_every=k``) is in every round's time
    instead of in one round out of k, where a median over rounds would hide it.
    """

    name: str
    step: Callable[[], Any]
    period: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    kind: str = "mtoframe"
    info: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class RoundTimes:
    """Per-step times of every contender in every timed round (ms): ``wall`` from
    ``time.perf_counter``, ``cpu`` from ``time.process_time`` (this process's CPU time, all
    threads: waiting for a core held by another process does not count)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    #: peak memory of one round's steps (MiB) per contender, when measured, how, and the wall
    #: time the measuring took
    peak_mib: dict[str, float] = attrs.field(factory=dict)
    mem_method: str | None = None
    memory_s: float = 0.0


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
                    device: torch.device | None = None, memory: bool = False,
                    on_round: Callable[[int], None] | None = None, warm_steps: int = 0) -> RoundTimes:
    """Run ``warmup`` untimed and ``rounds`` timed rounds, every contender once per round in a
    shuffled order; return per-contender, per-round step times.

    ``warm_steps``: in every round, each contender first runs this many untimed steps (whole
    update periods) right before its timed ones, so that the timed step finds the caches holding
    its own code and data, as in a training loop, not its predecessor's. With single interleaved
    steps (``0``) a few-millisecond step pays for refilling them, and how much depends on which
    other contenders are in the run: one sharing its solver code (a peer implementation) leaves
    part of it warm (``docs/BENCHMARKS.md``, "Timed steps follow a step of their own").

    ``memory``: in the last untimed round (at least one is run), each contender's steps run
    under :func:`peak_memory` instead, which gives its peak memory without a separate pass."""
    if rounds < 1:
        raise MtoError(f"rounds must be >= 1, got {rounds}")
    if warm_steps < 0:
        raise MtoError(f"warm_steps must be >= 0, got {warm_steps}")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise MtoError(f"contender names must be unique, got {names}")
    device = device or torch.device("cpu")
    untimed = max(warmup, 1) if memory else warmup
    order = list(contenders)
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {c.name: [] for c in contenders}
    cpu: dict[str, list[float]] = {c.name: [] for c in contenders}
    peaks: dict[str, float] = {}
    method = None
    memory_s = 0.0
    for r in range(untimed + rounds):
        rng.shuffle(order)
        for c in order:
            if memory and r == untimed - 1:
                m0 = time.perf_counter()
                peaks[c.name], method = peak_memory(functools.partial(_steps, c), device=device)
                memory_s += time.perf_counter() - m0
                continue
            for _ in range(warm_steps):
                _steps(c)
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            _steps(c)
            _sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= untimed:
                wall[c.name].append((t1 - t0) * 1e3 / c.period)
                cpu[c.name].append((c1 - c0) * 1e3 / c.period)
        if on_round is not None:
            on_round(r - untimed)
    return RoundTimes(wall, cpu, peaks, method, memory_s)


def _steps(c: Contender) -> None:
    for _ in range(c.period):
        c.step()


# -- memory --------------------------------------------------------------------------------------


CPU_METHOD = "cpu profiler peak of live tensor bytes"
CUDA_METHOD = "cuda max_memory_allocated delta"


def peak_memory(step: Callable[[], Any], *, device: torch.device, repeats: int = 1) -> tuple[float, str]:
    """Peak extra memory of one step in MiB (maximum over ``repeats`` steps) and how it was measured.

    A step's allocations do not depend on the machine's load, so one step per stack suffices
    (the default); on CPU it costs two profiled steps (see below), a few percent of the timing.

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
        return best / 2**20, CUDA_METHOD
    # The first profiled step misses the frees of tensors allocated before profiling began (the
    # previous step's gradients, set to None in this one) and would read too high: discarded.
    # c10 warns of those missed frees on stderr; the warning is about this discarded step.
    # The cyclic garbage collector is paused so that it cannot free earlier steps' garbage inside
    # a measured step (collecting it first instead took half a second per call in a process
    # holding a few dozen trainers, more than the steps).
    with _gc_paused():
        with _quiet_stderr_fd():
            cpu_allocations(step)
        peaks = [allocation_peak(cpu_allocations(step)) for _ in range(repeats)]
    return max(peaks) / 2**20, CPU_METHOD


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def cpu_allocations(fn: Callable[[], Any]) -> list[int]:
    """Signed sizes (bytes; negative = free) of the CPU tensor allocations made while ``fn``
    runs, in time order, as recorded by the PyTorch profiler.

    A free of a tensor allocated before the call is not seen."""
    from torch._C._profiler import _ExtraFields_Allocation
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
    results = prof.profiler.kineto_results if prof.profiler is not None else None
    if results is None:
        raise MtoError("torch's profiler recorded no results (is it built with Kineto?); "
                       "measure without --memory")
    stack = list(results.experimental_event_tree())
    while stack:
        e = stack.pop()
        fields = e.extra_fields
        # allocation events, and only they, carry _ExtraFields_Allocation (tag _EventType.Allocation)
        if isinstance(fields, _ExtraFields_Allocation) and fields.device.type == "cpu":
            events.append((e.start_time_ns, e.id, fields.alloc_size))
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
