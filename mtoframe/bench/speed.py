"""``mtoframe bench``: per-step time and peak memory of every stack on one model and batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from ..api import create
from ..errors import MtoError
from ..trainer import Trainer
from . import stats
from .timing import Contender, environment, run_interleaved, update_period
from .workloads import Workload

#: the baseline of every ratio, and the name of its second copy, timed in every round too: the
#: paired ratio of EW to itself is the run's own measure of how noisy the machine was
BASELINE = "ew"
BASELINE_AGAIN = "ew#2"


def adam(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


@attrs.define
class SpeedConfig:
    rounds: int = attrs.field(default=30, validator=attrs.validators.ge(2))
    warmup: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    lr: float = 1e-4
    seed: int = 0
    memory: bool = True
    device: str = "cpu"
    #: untimed steps of a stack right before each of its timed ones (see run_interleaved)
    warm_steps: int = attrs.field(default=1, validator=attrs.validators.ge(0))


def stack_label(stack: Sequence[str]) -> str:
    return "+".join(stack)


def stack_contender(workload: Workload, stack: Sequence[str], *, lr: float,
                    make_optimizer: Callable[[Any, float], torch.optim.Optimizer] = adam,
                    name: str | None = None, kind: str = "mtoframe") -> Contender:
    """A trainer for ``stack`` on a fresh copy of the workload's model; raises what the trainer
    raises for an impossible stack."""
    methods = [create(n) for n in stack]
    model = workload.fresh_model()
    trainer = Trainer(model, workload.tasks, methods, optimizer=make_optimizer(model.parameters(), lr),
                      progress=False)
    batch = workload.batch
    return Contender(name or stack_label(stack), lambda: trainer.step(batch), period=update_period(methods),
                     kind=kind, info={"methods": [repr(m) for m in methods], "trainer": trainer})


def does_ew_work_plus_more(record: dict[str, Any]) -> bool:
    """True for an mtoframe stack other than EW: every such step runs EW's forward, a backward of
    (a weighting of) the losses and the optimiser step, plus the methods' own work, so its time
    cannot be below EW's; a ratio below 1 is noise. Peers are other implementations and may be
    faster."""
    return record.get("kind") == "mtoframe" and record["stack"] != BASELINE


def run_speed(workload: Workload, stacks: Sequence[Sequence[str]], cfg: SpeedConfig, *,
              peers: Sequence[str] = (), strict: bool = False,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time every stack (and peers) interleaved; return one record per contender.

    A stack that cannot be built or fails on its first step becomes a record with ``error``
    (or raises when ``strict``, i.e. the user named it). EW is always timed, twice per round:
    it is the reference of ``ratio_to_ew``, and its second copy (``ew#2``, kind ``reference``)
    measures the noise of a ratio that should be 1.
    """
    say = progress or (lambda s: None)
    device = torch.device(cfg.device)
    stacks = [list(s) for s in stacks]
    if [BASELINE] not in stacks:
        stacks.insert(0, [BASELINE])
    # The first trainer a process builds steps slower than identical ones built after it (on
    # few-ms steps; benchmarks/creation_order.py), and the first built here would be EW, the
    # denominator of every ratio: an untimed EW trainer, built, stepped and kept alive until the
    # timing ends, takes that place instead.
    untimed = stack_contender(workload, [BASELINE], lr=cfg.lr)
    untimed.step()
    contenders: list[Contender] = []
    failed: list[dict[str, Any]] = []
    for stack in stacks:
        label = stack_label(stack)
        try:
            c = stack_contender(workload, stack, lr=cfg.lr)
            c.step()  # first step outside the timing: builds solvers, lazy state, fails early
        except MtoError as exc:
            if strict or label == BASELINE:
                raise
            say(f"skipping {label}: {exc}")
            failed.append({"stack": label, "kind": "mtoframe", "error": f"{type(exc).__name__}: {exc}"})
            continue
        contenders.append(c)
    again = stack_contender(workload, [BASELINE], lr=cfg.lr, name=BASELINE_AGAIN, kind="reference")
    again.step()
    contenders.append(again)
    if "torchjd" in peers:
        from .peers import torchjd_contenders

        names = [s[0] for s in stacks if len(s) == 1]
        opts = {n: attrs.asdict(create(n).options) for n in names}
        peer_cs, peer_errors = torchjd_contenders(workload, names, lr=cfg.lr, make_optimizer=adam, options=opts)
        for c in peer_cs:
            try:
                c.step()
            except Exception as exc:  # a peer's failure is reported in its record, not ours to fix
                peer_errors.append({"stack": c.name, "kind": "torchjd", "error": f"{type(exc).__name__}: {exc}"})
                continue
            contenders.append(c)
        failed += peer_errors
    unknown_peers = sorted(set(peers) - {"torchjd"})
    if unknown_peers:
        raise MtoError(f"unknown peer(s) {unknown_peers}; available: torchjd")

    say(f"timing {len(contenders)} contenders: {cfg.warmup} warm-up + {cfg.rounds} interleaved rounds"
        + ("; peak memory from the last warm-up round" if cfg.memory else ""))
    t0 = time.perf_counter()

    def tick(r: int) -> None:
        if r >= 0 and (r + 1) % max(1, cfg.rounds // 5) == 0:
            say(f"round {r + 1}/{cfg.rounds} ({time.perf_counter() - t0:.0f} s)")

    times = run_interleaved(contenders, rounds=cfg.rounds, warmup=cfg.warmup, seed=cfg.seed, device=device,
                            memory=cfg.memory, on_round=tick, warm_steps=cfg.warm_steps)
    elapsed_s = time.perf_counter() - t0
    del untimed
    wall = stats.paired_ratios_ci(times.wall, BASELINE, seed=cfg.seed)
    cpu = stats.paired_ratios_ci(times.cpu, BASELINE, seed=cfg.seed)
    env = environment(device)
    clock = headline_clock(device, torch.get_num_threads())
    run = {"rounds": cfg.rounds, "warmup": cfg.warmup, "warm_steps": cfg.warm_steps, "elapsed_s": elapsed_s,
           "memory_s": times.memory_s,
           "confidence": stats.CONFIDENCE, "headline": clock}
    records: list[dict[str, Any]] = []
    head_times = times.cpu if clock == "cpu" else times.wall
    ew_head = head_times[BASELINE]
    for c in contenders:
        w, u = wall[c.name], cpu[c.name]
        head = u if clock == "cpu" else w
        peer = peer_of(c, head_times)
        to_peer = stats.paired_ratio_ci(head_times[c.name], head_times[peer], seed=cfg.seed) if peer else None
        rec: dict[str, Any] = {
            "stack": c.name,
            "kind": c.kind,
            "ratio_to_ew": head.value,
            "ratio_to_ew_ci": head.interval,
            "ratio_to_ew_wall": w.value,
            "ratio_to_ew_wall_ci": w.interval,
            "ratio_to_ew_cpu": u.value,
            "ratio_to_ew_cpu_ci": u.interval,
            "ms_median": stats.summarise_times(times.wall[c.name])["median_ms"],
            "cpu_ms_median": stats.summarise_times(times.cpu[c.name])["median_ms"],
            "wall_summary": stats.summarise_times(times.wall[c.name]),
            "peer": peer,
            "ratio_to_peer": to_peer.value if to_peer else None,
            "ratio_to_peer_ci": to_peer.interval if to_peer else None,
            "period": c.period,
            "rounds": [{"wall_ms": a, "cpu_ms": b, "ratio_to_ew": (b if clock == "cpu" else a) / e}
                       for a, b, e in zip(times.wall[c.name], times.cpu[c.name], ew_head, strict=True)],
            "peak_mem_mib": times.peak_mib.get(c.name),
            "mem_method": times.mem_method,
            "methods": c.info.get("methods", [c.info.get("aggregator", "")]),
            "workload": {"name": workload.name, **workload.info},
            "environment": env,
            "run": run,
            "error": None,
        }
        rec["noise"] = noise_flags(rec)
        records.append(rec)
    for f in failed:
        records.append({**f, "ratio_to_ew": None, "workload": {"name": workload.name, **workload.info},
                        "environment": env, "run": run})
    return records


def peer_of(c: Contender, timed: dict[str, list[float]]) -> str | None:
    """The peer contender timed beside mtoframe stack ``c`` (``torchjd:<name>``), if any: the
    baseline of its ``ratio_to_peer``, the median over rounds of the paired per-round ratios."""
    name = f"torchjd:{c.name}"
    return name if c.kind == "mtoframe" and name in timed else None


def headline_clock(device: torch.device, threads: int) -> str:
    """The clock of ``ratio_to_ew``: process CPU time for a single-threaded run on CPU, wall time
    otherwise.

    With one thread on CPU the two clocks measure the same work, and on an idle machine they
    agree; on a busy one the wall clock adds the time the process waited for a core, which
    belongs to the other jobs, not to the method. With more threads CPU time sums them (and
    their spinning), and on CUDA it misses the kernels: there wall time is the measure.
    """
    return "cpu" if device.type == "cpu" and threads == 1 else "wall"


def noise_flags(record: dict[str, Any]) -> list[str]:
    """What makes a record's ratio unreliable: ``below_ew`` (a stack that does EW's work plus
    more measured faster than EW, wall or CPU), ``wide`` (the headline interval's half-width
    above ``stats.NOISY_HALF_WIDTH`` of the ratio), ``no_interval`` (too few rounds)."""
    flags = []
    if does_ew_work_plus_more(record) and min(record["ratio_to_ew_wall"], record["ratio_to_ew_cpu"]) < 1:
        flags.append("below_ew")
    ci = record["ratio_to_ew_ci"]
    if ci is None:
        flags.append("no_interval")
    elif (ci[1] - ci[0]) / 2 > stats.NOISY_HALF_WIDTH * record["ratio_to_ew"]:
        flags.append("wide")
    return flags
