"""Step time and peak memory of every stack on the config's own model and first training batch,
measured by the timing harness (:func:`mtoframe.bench.speed.run_speed`: interleaved rounds,
paired ratios to EW with bootstrap intervals)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..bench.speed import SpeedConfig, run_speed
from ..bench.workloads import Workload
from ..config import RunConfig
from .runs import build_splits

#: the fields of a timing record that a comparison keeps
KEPT = ("stack", "ratio_to_ew", "ratio_to_ew_ci", "ratio_to_ew_wall", "ratio_to_ew_wall_ci", "ratio_to_ew_cpu",
        "ratio_to_ew_cpu_ci", "ms_median", "cpu_ms_median", "period", "peak_mem_mib", "mem_method", "noise", "run",
        "environment")


def config_workload(cfg: RunConfig) -> Workload:
    """The config's model (built with ``torch.manual_seed(cfg.seed)``, as its first run's) and its
    first training batch."""
    torch.manual_seed(cfg.seed)
    model, tasks, train, _, _ = build_splits(cfg)
    batch = next(iter(DataLoader(train, batch_size=cfg.batch_size, shuffle=False)))
    return Workload(f"config ({cfg.data.factory or cfg.data.name})", model, tasks, batch,
                    info={"batch": cfg.batch_size}).to(torch.device(cfg.device))


def measure(cfg: RunConfig, stacks: Sequence[Sequence[str]], *, rounds: int, warmup: int,
            say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """``{stack label: timing record}`` (EW included, ``ew#2`` = EW against itself: the run's noise)."""
    workload = config_workload(cfg)
    records = run_speed(workload, [list(s) for s in stacks],
                        SpeedConfig(rounds=rounds, warmup=warmup, lr=cfg.optimizer.lr, seed=cfg.seed, memory=True,
                                    device=cfg.device), strict=True, progress=say)
    return {r["stack"]: {k: r.get(k) for k in KEPT} for r in records}
