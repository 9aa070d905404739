"""Head-to-head step timing: interleaved rounds of wall and CPU time, peak memory.

Every contender (an mtoframe stack or a peer implementation) owns its own copy of the same
initial model and steps on the same batch. Each round runs every contender once, in a freshly
shuffled order, so drifts of the machine (thermal, other processes) hit all contenders alike
instead of whichever happened to run last. The statistics of the rounds are in
:mod:`mtoframe.bench.stats`.
"""

from __future__ import annotations

import contextlib
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
    #: peak memory of one round's steps (MiB) per contender, when measured, and how
    peak_mib: dict[str, float] = attrs.field(factory=dict)
    mem_method: str | None = None


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
                    on_round: Callable[[int], None] | None = None) -> RoundTimes:
    """Run ``warmup`` untimed and ``rounds`` timed rounds, every contender once per round in a
    shuffled order; return per-contender, per-round step times.

    ``memory``: also measure every contender's peak memory in the last untimed round (see
    :class:`RoundMemory`); at least 2 untimed rounds run on CPU, 1 on CUDA."""
    if rounds < 1:
        raise MtoError(f"rounds must be >= 1, got {rounds}")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise MtoError(f"contender names must be unique, got {names}")
    device = device or torch.device("cpu")
    probe = RoundMemory(device) if memory else None
    untimed = max(warmup, probe.rounds_needed) if probe else warmup
    order = list(contenders)
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {c.name: [] for c in contenders}
    cpu: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(untimed + rounds):
        rng.shuffle(order)
        if probe:
            probe.begin_round(untimed - r)
        for c in order:
            with probe.around_step(untimed - r, c.name) if probe else contextlib.nullcontext():
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(c.period):
                    c.step()
                _sync(device)
                t1, c1 = time.perf_counter(), time.process_time()
            if r >= untimed:
                wall[c.name].append((t1 - t0) * 1e3 / c.period)
                cpu[c.name].append((c1 - c0) * 1e3 / c.period)
        if probe:
            probe.end_round(untimed - r)
        if on_round is not None:
            on_round(r - untimed)
    peaks = probe.peaks_mib() if probe else {}
    return RoundTimes(wall, cpu, peaks, probe.method if probe else None)


# -- memory --------------------------------------------------------------------------------------


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
    # Collecting garbage first keeps frees of earlier steps' cyclic garbage out of the step.
    # c10 warns of those missed frees on stderr; the warning is about this discarded step.
    gc.collect()
    with _quiet_stderr_fd():
        cpu_allocations(step)
    peaks = []
    for _ in range(repeats):
        gc.collect()
        peaks.append(allocation_peak(cpu_allocations(step)))
    return max(peaks) / 2**20, CPU_METHOD


CPU_METHOD = "cpu profiler peak of live tensor bytes"
CUDA_METHOD = "cuda max_memory_allocated delta"


class RoundMemory:
    """Peak memory of every contender's steps in one untimed round of :func:`run_interleaved`,
    at the cost of that round and the one before running under the profiler (on CPU) instead of
    a separate pass of profiled steps per contender.

    CPU: one profiler session spans the last two untimed rounds, so the frees of tensors a
    contender kept from its previous step (gradients set to None, say) are seen; each
    contender's steps in the last round are a window whose allocations, in order, give the peak
    of their running sum, as :func:`peak_memory` measures it. CUDA: ``max_memory_allocated``
    above the allocation before the contender's steps.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.rounds_needed = 1 if self.cuda else 2
        self.method = CUDA_METHOD if self.cuda else CPU_METHOD
        self._trace: AllocationTrace | None = None
        self._session: contextlib.ExitStack | None = None
        self._cuda_peaks: dict[str, float] = {}

    def begin_round(self, rounds_left: int) -> None:
        """Called before each round with the number of untimed rounds left (this one included)."""
        if not self.cuda and rounds_left == 2:
            self._session = contextlib.ExitStack()
            self._trace = self._session.enter_context(cpu_allocation_trace())

    def around_step(self, rounds_left: int, name: str) -> contextlib.AbstractContextManager[None]:
        if rounds_left == 1:
            return self._measure(name)
        if rounds_left == 2 and not self.cuda:
            # c10 warns on fd 2 of the frees of tensors allocated before the session: expected here
            return _quiet_stderr_fd()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _measure(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self._cuda_peaks[name] = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
            return
        assert self._trace is not None
        gc.collect()  # earlier steps' cyclic garbage is freed here, not inside the window
        with self._trace.window(name):
            yield

    def end_round(self, rounds_left: int) -> None:
        if rounds_left == 1 and self._session is not None:
            self._session.close()

    def peaks_mib(self) -> dict[str, float]:
        if self.cuda:
            return dict(self._cuda_peaks)
        assert self._trace is not None
        return {name: allocation_peak(self._trace.sizes(name)) / 2**20 for name in self._trace.names()}


_WINDOW = "mtoframe.bench.window:"


class AllocationTrace:
    """CPU tensor allocations recorded by the PyTorch profiler, with named windows of time."""

    def __init__(self) -> None:
        self._events: list[tuple[int, int, int]] = []  # (time ns, id, signed size)
        self._windows: dict[str, list[tuple[int, int]]] = {}

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        from torch.profiler import record_function

        self._windows.setdefault(name, [])
        with record_function(_WINDOW + name):
            yield

    def names(self) -> list[str]:
        return list(self._windows)

    def sizes(self, name: str | None = None) -> list[int]:
        """Signed sizes (bytes; negative = free) in time order, of the whole session or of the
        window(s) called ``name``."""
        if name is None:
            return [size for _, _, size in self._events]
        spans = self._windows[name]
        return [size for t, _, size in self._events if any(a <= t <= b for a, b in spans)]

    def _load(self, prof: Any) -> None:
        # The public ``prof.events()`` folds an allocation made inside an op into that op's totals
        # and keeps only the unattributed ones as ``[memory]`` rows, which loses the order; the
        # event tree (what torch's own memory profiler reads) keeps every allocation with its time.
        from torch._C._profiler import _EventType

        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            e = stack.pop()
            if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
                self._events.append((e.start_time_ns, e.id, e.extra_fields.alloc_size))
            elif e.name.startswith(_WINDOW):
                self._windows[e.name[len(_WINDOW):]].append((e.start_time_ns, e.end_time_ns))
            stack.extend(e.children)
        self._events.sort()


@contextlib.contextmanager
def cpu_allocation_trace() -> Iterator[AllocationTrace]:
    """Record CPU tensor allocations while the block runs; the trace is filled when it exits.
    A free of a tensor allocated before the block began is not seen."""
    from torch.profiler import ProfilerActivity, profile

    trace = AllocationTrace()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr_fd():  # Kineto writes a line to fd 2 on every start and stop
        prof.start()
    try:
        yield trace
    finally:
        with _quiet_stderr_fd():
            prof.stop()
    trace._load(prof)


def cpu_allocations(fn: Callable[[], Any]) -> list[int]:
    """Signed sizes (bytes; negative = free) of the CPU tensor allocations made while ``fn``
    runs, in time order, as recorded by the PyTorch profiler.

    A free of a tensor allocated before the call is not seen."""
    with cpu_allocation_trace() as trace:
        fn()
    return trace.sizes()


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
