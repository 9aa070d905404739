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
from .timing import Contender, environment, peak_memory, run_interleaved, summarise_times, update_period
from .workloads import Workload


def adam(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


@attrs.define
class SpeedConfig:
    rounds: int = 50
    warmup: int = 5
    min_block: int = 5
    lr: float = 1e-4
    seed: int = 0
    memory: bool = True
    memory_repeats: int = 3
    device: str = "cpu"


def stack_label(stack: Sequence[str]) -> str:
    return "+".join(stack)


def stack_contender(workload: Workload, stack: Sequence[str], *, lr: float,
                    make_optimizer: Callable[[Any, float], torch.optim.Optimizer] = adam) -> Contender:
    """A trainer for ``stack`` on a fresh copy of the workload's model; raises what the trainer
    raises for an impossible stack."""
    methods = [create(n) for n in stack]
    model = workload.fresh_model()
    trainer = Trainer(model, workload.tasks, methods, optimizer=make_optimizer(model.parameters(), lr),
                      progress=False)
    batch = workload.batch
    return Contender(stack_label(stack), lambda: trainer.step(batch), period=update_period(methods),
                     info={"methods": [repr(m) for m in methods], "trainer": trainer})


def run_speed(workload: Workload, stacks: Sequence[Sequence[str]], cfg: SpeedConfig, *,
              peers: Sequence[str] = (), strict: bool = False,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time every stack (and peers) interleaved; return one record per contender.

    A stack that cannot be built or fails on its first step becomes a record with ``error``
    (or raises when ``strict``, i.e. the user named it). EW is always timed: it is the
    reference of ``ratio_to_ew``.
    """
    say = progress or (lambda s: None)
    device = torch.device(cfg.device)
    stacks = [list(s) for s in stacks]
    if ["ew"] not in stacks:
        stacks.insert(0, ["ew"])
    contenders: list[Contender] = []
    failed: list[dict[str, Any]] = []
    for stack in stacks:
        label = stack_label(stack)
        try:
            c = stack_contender(workload, stack, lr=cfg.lr)
            c.step()  # first step outside the timing: builds solvers, lazy state, fails early
        except MtoError as exc:
            if strict or label == "ew":
                raise
            say(f"skipping {label}: {exc}")
            failed.append({"stack": label, "kind": "mtoframe", "error": f"{type(exc).__name__}: {exc}"})
            continue
        contenders.append(c)
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

    block = max([cfg.min_block] + [c.period for c in contenders])
    say(f"timing {len(contenders)} contenders: {cfg.warmup} warm-up + {cfg.rounds} interleaved rounds, block {block}")
    t0 = time.perf_counter()

    def tick(r: int) -> None:
        if r >= 0 and (r + 1) % max(1, cfg.rounds // 5) == 0:
            say(f"round {r + 1}/{cfg.rounds} ({time.perf_counter() - t0:.0f} s)")

    times = run_interleaved(contenders, rounds=cfg.rounds, warmup=cfg.warmup, seed=cfg.seed, device=device,
                            on_round=tick)
    stats = {name: summarise_times(ts, block) for name, ts in times.items()}
    mem: dict[str, tuple[float, str]] = {}
    if cfg.memory:
        say("measuring peak memory")
        for c in contenders:
            mem[c.name] = peak_memory(c.step, device=device, repeats=cfg.memory_repeats)
    env = environment(device)
    ew = stats["ew"]
    records: list[dict[str, Any]] = []
    for c in contenders:
        s = stats[c.name]
        rec: dict[str, Any] = {
            "stack": c.name,
            "kind": c.kind,
            "ratio_to_ew": s["block_mean_ms"] / ew["block_mean_ms"],
            "ratio_to_ew_median": s["median_ms"] / ew["median_ms"],
            **s,
            "block": block,
            "period": c.period,
            "rounds": cfg.rounds,
            "warmup": cfg.warmup,
            "peak_mem_mib": mem[c.name][0] if c.name in mem else None,
            "mem_method": mem[c.name][1] if c.name in mem else None,
            "methods": c.info.get("methods", [c.info.get("aggregator", "")]),
            "workload": {"name": workload.name, **workload.info},
            "environment": env,
            "times_ms": times[c.name],
            "error": None,
        }
        records.append(rec)
    for f in failed:
        records.append({**f, "ratio_to_ew": None, "workload": {"name": workload.name, **workload.info},
                        "environment": env})
    return records
