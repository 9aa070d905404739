"""``mtoframe bench --quality``: single-task baselines and every stack trained on ``scenes`` for
the same fixed budget over several seeds, compared with ``Δp_task`` (higher is better),
``Δm%`` (lower is better) and the mean rank over all metrics.

Checkpoint rule: the model after the last epoch (no selection on validation data, which would
favour methods with noisier curves). The baseline of each metric is its single-task value
averaged over seeds; ``Δp_task`` and ``Δm%`` are computed per seed against it and then
averaged.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import torch
from torch.utils.data import DataLoader

from ..api import create
from ..errors import MtoError
from ..metrics import delta_m, delta_p_task, task_directions
from ..trainer import Trainer
from . import report
from .workloads import to_device

CHECKPOINT_RULE = "last epoch (no model selection on validation data)"


@attrs.define
class QualityConfig:
    size: int = 64
    batch: int = 32
    width: int = 32
    seeds: int = 3
    epochs: int = 20
    n_train: int = 2000
    n_val: int = 400
    lr: float = 1e-3
    device: str = "cpu"
    cache_dir: str | None = None
    seed: int = 0


class _Select:
    """Re-iterable loader view keeping only some tasks' targets (single-task baselines)."""

    def __init__(self, loader: Iterable[Any], tasks: Sequence[str], device: torch.device) -> None:
        self.loader, self.tasks, self.device = loader, tuple(tasks), device

    def __iter__(self) -> Iterator[Any]:
        for x, y in self.loader:
            yield to_device((x, {t: y[t] for t in self.tasks}), self.device)


def train_one(model: Any, tasks: Sequence[Any], stack: Sequence[str], train: Any, val: Any, cfg: QualityConfig,
              seed: int) -> dict[str, dict[str, float]]:
    device = torch.device(cfg.device)
    model = model.to(device)
    names = [t.name for t in tasks]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    methods = [create(n) for n in stack if n != "ew"]
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=cfg.batch, shuffle=True, generator=gen, drop_last=True)
    with Trainer(model, tasks, methods, optimizer=opt, progress=False) as trainer:
        trainer.fit(_Select(loader, names, device), epochs=cfg.epochs)
        return trainer.evaluate(_Select(DataLoader(val, batch_size=64), names, device))


def run_quality(stacks: Sequence[Sequence[str]], cfg: QualityConfig, *, strict: bool = False,
                say: Any = print) -> dict[str, Any]:
    from ..data import scenes_datasets
    from ..data.scenes import NUM_CLASSES
    from ..models.hps import build_scene_model, scene_tasks

    train, val = scenes_datasets(n_train=cfg.n_train, n_val=cfg.n_val, size=cfg.size, seed=cfg.seed,
                                 cache_dir=cfg.cache_dir)
    all_tasks = scene_tasks(NUM_CLASSES)
    task_names = [t.name for t in all_tasks]
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stl: dict[int, dict[str, dict[str, float]]] = {}
    runs: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for seed in seeds:
        stl[seed] = {}
        for t in all_tasks:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            model = build_scene_model(num_classes=NUM_CLASSES, width=cfg.width, tasks=(t.name,))
            stl[seed].update(train_one(model, [t], [], train, val, cfg, seed))
            seconds[f"stl:{t.name}"] = seconds.get(f"stl:{t.name}", 0.0) + time.perf_counter() - t0
            say(f"  seed {seed} single-task {t.name}: {_short(stl[seed][t.name])}")
        for stack in stacks:
            label = "+".join(stack)
            if label in errors:
                continue
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            model = build_scene_model(num_classes=NUM_CLASSES, width=cfg.width)
            try:
                res = train_one(model, all_tasks, stack, train, val, cfg, seed)
            except MtoError as exc:
                if strict:
                    raise
                errors[label] = f"{type(exc).__name__}: {exc}"
                say(f"  {label} failed: {errors[label]}")
                continue
            seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t0
            runs.setdefault(label, {})[seed] = res
            say(f"  seed {seed} {label}: " + "; ".join(f"{k} {_short(v)}" for k, v in res.items()))
    return summarise_quality(stl, runs, all_tasks, cfg=cfg, errors=errors, seconds=seconds)


def _short(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:2])


def _mean_metrics(per_seed: Iterable[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    per_seed = list(per_seed)
    first = per_seed[0]
    return {t: {m: statistics.fmean(r[t][m] for r in per_seed) for m in first[t]} for t in first}


def mean_ranks(results: dict[str, dict[str, dict[str, float]]], directions: dict[str, dict[str, str]]) -> dict[str, float]:
    """Mean over all metrics of each stack's rank (1 = best; ties share the average rank)."""
    labels = list(results)
    total = {lab: 0.0 for lab in labels}
    count = 0
    for task, dirs in directions.items():
        for metric, d in dirs.items():
            sign = 1.0 if d == "lower" else -1.0
            vals = sorted((sign * results[lab][task][metric], lab) for lab in labels)
            i = 0
            while i < len(vals):
                j = i
                while j + 1 < len(vals) and vals[j + 1][0] == vals[i][0]:
                    j += 1
                for k in range(i, j + 1):
                    total[vals[k][1]] += (i + j) / 2 + 1
                i = j + 1
            count += 1
    return {lab: total[lab] / count for lab in labels}


def summarise_quality(stl: dict[int, dict[str, dict[str, float]]], runs: dict[str, dict[int, dict[str, dict[str, float]]]],
                      tasks: Sequence[Any], *, cfg: QualityConfig, errors: dict[str, str],
                      seconds: dict[str, float]) -> dict[str, Any]:
    directions = task_directions(tasks)
    baseline = _mean_metrics(stl.values())
    # A relative change against a zero baseline is undefined: such a metric (e.g. the share of
    # normals within 11.25° after a very short budget) is left out of Δp_task and Δm%, and named.
    excluded = [f"{t}/{m}" for t, ms in baseline.items() for m, v in ms.items() if v == 0 or math.isnan(v)]
    kept = {t: {m: d for m, d in ds.items() if f"{t}/{m}" not in excluded} for t, ds in directions.items()}

    def keep(r: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        return {t: {m: v for m, v in ms.items() if m in kept[t]} for t, ms in r.items()}
    records = []
    means = {label: _mean_metrics(per.values()) for label, per in runs.items()}
    ranks = mean_ranks(means, directions) if means else {}
    for label, per in runs.items():
        dp = [delta_p_task(keep(r), keep(baseline), kept) for r in per.values()]
        dm = [delta_m(keep(r), keep(baseline), kept) for r in per.values()]
        records.append({
            "stack": label,
            "metrics": means[label],
            "per_seed": {str(s): r for s, r in per.items()},
            "delta_p_task": statistics.fmean(dp),
            "delta_p_task_std": statistics.stdev(dp) if len(dp) > 1 else 0.0,
            "delta_m": statistics.fmean(dm),
            "delta_m_std": statistics.stdev(dm) if len(dm) > 1 else 0.0,
            "mean_rank": ranks[label],
            "seeds": sorted(per),
            "seconds": seconds.get(label),
        })
    records.sort(key=lambda r: -r["delta_p_task"])
    return {
        "checkpoint_rule": CHECKPOINT_RULE,
        "summary_metrics": {"delta_p_task": "higher is better (LibMTL, DB-MTL, Rep-MTL)",
                            "delta_m": "lower is better (CAGrad, Nash-MTL, FAMO)"},
        "config": attrs.asdict(cfg),
        "directions": directions,
        "baseline": {"metrics": baseline, "per_seed": {str(s): r for s, r in stl.items()},
                     "seconds": {k: v for k, v in seconds.items() if k.startswith("stl:")}},
        "records": records,
        "excluded_from_deltas": excluded,
        "errors": errors,
    }


def quality_table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    directions = result["directions"]
    cols = [(t, m) for t, ms in directions.items() for m in ms]
    header = ["stack"] + [f"{t[:4]}/{m}{'↑' if directions[t][m] == 'higher' else '↓'}" for t, m in cols]
    header += ["Δp_task %↑", "Δm %↓", "mean rank"]
    rows = [["STL"] + [result["baseline"]["metrics"][t][m] for t, m in cols] + [0.0, 0.0, None]]
    for r in result["records"]:
        rows.append([r["stack"]] + [r["metrics"][t][m] for t, m in cols]
                    + [r["delta_p_task"], r["delta_m"], r["mean_rank"]])
    return header, rows


def run_quality_cli(stacks: Sequence[Sequence[str]], cfg: QualityConfig, *, out: Path, strict: bool,
                    stream: TextIO) -> int:
    def say(s: str) -> None:
        print(s, file=stream, flush=True)

    say(f"mtoframe bench --quality: scenes {cfg.size}x{cfg.size}, {cfg.n_train} train / {cfg.n_val} val images, "
        f"width {cfg.width}, {cfg.epochs} epochs of batch {cfg.batch}, Adam lr {cfg.lr}, seeds {cfg.seeds}, {cfg.device}")
    say(f"checkpoint rule: {CHECKPOINT_RULE}")
    t0 = time.perf_counter()
    result = run_quality(stacks, cfg, strict=strict, say=say)
    result["wall_seconds"] = time.perf_counter() - t0
    header, rows = quality_table(result)
    say("")
    say(report.table(rows, header))
    say(f"\nmetrics are means over {cfg.seeds} seed(s) on the validation split; checkpoint: {CHECKPOINT_RULE}.")
    say("Δp_task (higher is better) and Δm% (lower is better) vs the single-task baselines (STL); "
        "mean rank over all metrics among the stacks (1 = best).")
    if result["excluded_from_deltas"]:
        say(f"left out of Δp_task and Δm% (single-task baseline is 0): {', '.join(result['excluded_from_deltas'])}")
    for label, err in result["errors"].items():
        say(f"not trained: {label}: {err}")
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "quality.json", result)
    (out / "quality.md").write_text(report.markdown_table(rows, header) + "\n")
    recs = result["records"]
    png = report.bar_chart(out / "quality.png", [r["stack"] for r in recs], [r["delta_p_task"] for r in recs],
                           errors=[r["delta_p_task_std"] for r in recs], reference=0.0,
                           xlabel="Δp_task % vs single-task (higher is better; ± std over seeds)",
                           title=f"mtoframe bench --quality on scenes ({cfg.seeds} seeds, {CHECKPOINT_RULE.split(' (')[0]})")
    scalars: dict[str, float] = {}
    for r in recs:
        scalars[f"quality/delta_p_task/{r['stack']}"] = r["delta_p_task"]
        scalars[f"quality/delta_m/{r['stack']}"] = r["delta_m"]
        scalars[f"quality/mean_rank/{r['stack']}"] = r["mean_rank"]
        for t, ms in r["metrics"].items():
            for m, v in ms.items():
                if not math.isnan(v):
                    scalars[f"quality/{t}/{m}/{r['stack']}"] = v
    report.tensorboard_scalars(out / "tensorboard-quality", scalars,
                               text={"quality/table": report.markdown_table(rows, header)})
    say(f"\nwrote {out / 'quality.json'}, {out / 'quality.md'}" + (f", {out / 'quality.png'}" if png else "")
        + f" in {result['wall_seconds']:.0f} s")
    return 1 if strict and result["errors"] else 0
