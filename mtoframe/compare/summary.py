"""Per-stack quality against EW, paired by seed, with intervals, and the plain-words verdicts.

Nothing here calls a stack better or worse than EW unless the 95% interval of its paired
difference excludes 0 (:func:`mtoframe.bench.stats.difference_verdict`); with one seed there is no interval
and so no verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from ..bench.stats import difference_verdict as verdict
from ..bench.stats import mean_ci
from ..metrics import Direction, delta_p_task

EW = "ew"


def _ci(values: Sequence[float]) -> dict[str, Any]:
    if any(math.isnan(v) for v in values):  # a metric undefined on some seed: no mean, no verdict
        return {"mean": math.nan, "ci": [math.nan, math.nan], "per_seed": list(values)}
    mean, (low, high) = mean_ci(values)
    return {"mean": mean, "ci": [low, high], "per_seed": list(values)}


def quality_vs_ew(results: Mapping[str, Mapping[int, Mapping[str, Any]]],
                  directions: Mapping[str, Mapping[str, Direction]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({stack: quality record}, excluded metrics)`` from ``{stack: {seed: run result}}``.

    A metric whose EW value is 0 or NaN on some seed has no relative change there: it is left out
    of Δp_task (named in the second value) but keeps its plain paired difference."""
    ew = results[EW]
    excluded = sorted({f"{t}/{m}" for r in ew.values() for t, ms in r["metrics"].items() for m, v in ms.items()
                       if v == 0 or math.isnan(v)})
    kept = {t: {m: d for m, d in ds.items() if f"{t}/{m}" not in excluded} for t, ds in directions.items()}
    kept = {t: ds for t, ds in kept.items() if ds}
    out: dict[str, dict[str, Any]] = {}
    for label, per in results.items():
        if label == EW:
            continue
        seeds = sorted(s for s in per if s in ew)
        rec: dict[str, Any] = {"seeds": seeds}
        if kept:
            dp = [delta_p_task(_only(per[s]["metrics"], kept), _only(ew[s]["metrics"], kept), kept) for s in seeds]
            rec["delta_p_task"] = _ci(dp)
            rec["verdict"] = verdict(tuple(rec["delta_p_task"]["ci"]))
        else:
            rec["delta_p_task"], rec["verdict"] = None, "no difference"
        rec["metrics"] = {}
        for t, ds in directions.items():
            for m, d in ds.items():
                diff = _ci([per[s]["metrics"][t][m] - ew[s]["metrics"][t][m] for s in seeds])
                diff["direction"] = d
                diff["verdict"] = verdict(tuple(diff["ci"]), higher_is_better=d == "higher")
                rec["metrics"].setdefault(t, {})[m] = diff
        out[label] = rec
    return out, excluded


def _only(metrics: Mapping[str, Mapping[str, float]],
          kept: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, float]]:
    return {t: {m: metrics[t][m] for m in ms} for t, ms in kept.items()}


def _interval_known(ci: Sequence[float] | None) -> TypeGuard[Sequence[float]]:
    return ci is not None and not any(v is None or math.isnan(v) for v in ci)


def time_words(timing: Mapping[str, Any] | None) -> str:
    if not timing or timing.get("ratio_to_ew") is None:
        return "step time not measured"
    r, ci = timing["ratio_to_ew"], timing.get("ratio_to_ew_ci")
    span = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if _interval_known(ci) else ""
    return f"{r:.2f}× EW's step time{span}"


def stack_sentence(label: str, quality: Mapping[str, Any], timing: Mapping[str, Any] | None) -> str:
    """One line per stack: the quality verdict (only what its interval supports) and the cost."""
    cost = time_words(timing)
    dp = quality.get("delta_p_task")
    if dp is None:
        return f"{label}: no Δp_task (every EW metric is 0), {cost}"
    mean, ci, n = dp["mean"], dp["ci"], len(quality["seeds"])
    if not _interval_known(ci):
        return f"{label}: {mean:+.2f} Δp_task from {n} seed(s), too few for an interval: no verdict; {cost}"
    span = f"{mean:+.2f} Δp_task [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    v = quality["verdict"]
    if v == "better":
        return f"{label}: better than EW, {span}, {cost}"
    if v == "worse":
        return f"{label}: worse than EW, {span}, {cost}"
    return f"{label}: no difference from EW within noise ({span}), {cost}"


def metric_words(label: str, quality: Mapping[str, Any]) -> str:
    """Which metrics moved beyond noise, each by its own paired interval and direction."""
    moved: dict[str, list[str]] = {"better": [], "worse": []}
    for t, ms in quality["metrics"].items():
        for m, rec in ms.items():
            if rec["verdict"] in moved:
                moved[rec["verdict"]].append(f"{t}/{m}")
    if not moved["better"] and not moved["worse"]:
        return f"{label} per metric: no metric differs from EW within noise"
    parts = [f"{v} than EW on {', '.join(ms)}" for v, ms in moved.items() if ms]
    return f"{label} per metric: {'; '.join(parts)}; no difference on the others"


def conclusion(quality: Mapping[str, Mapping[str, Any]], n_seeds: int) -> str:
    """The headline: which stacks beat EW within their intervals, never ranking stacks whose
    intervals overlap."""
    better = sorted((q for q in quality.items() if q[1]["verdict"] == "better"),
                    key=lambda q: -q[1]["delta_p_task"]["mean"])
    if not better:
        return (f"No stack beats EW within noise on this problem ({n_seeds} seeds, 95% intervals of Δp_task vs EW); "
                "EW is the cheapest choice here.")
    names = [b[0] for b in better]
    if len(better) == 1:
        return f"{names[0]} is the only stack better than EW within its 95% interval ({n_seeds} seeds)."
    top = better[0][1]["delta_p_task"]["ci"]
    if all(top[0] > b[1]["delta_p_task"]["ci"][1] for b in better[1:]):
        return (f"Better than EW within their 95% intervals: {', '.join(names)}; {names[0]}'s interval lies above "
                f"the others' ({n_seeds} seeds).")
    return (f"Better than EW within their 95% intervals: {', '.join(names)}; their intervals overlap, so these "
            f"{n_seeds} seeds do not rank them against each other.")
