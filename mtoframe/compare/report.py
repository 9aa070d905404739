"""The files of a comparison: ``compare.json`` (everything), ``compare.md`` (table and verdicts),
``compare.png`` (quality gain against time cost, both with their intervals) and a TensorBoard
summary run beside the per-(stack, seed) runs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bench import report
from .summary import EW


def _span(mean: float, ci: Sequence[float] | None, fmt: str = "+.2f") -> str:
    if ci is None or any(v is None or math.isnan(v) for v in ci):
        return f"{mean:{fmt}}"
    return f"{mean:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def table(result: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    directions = result["directions"]
    cols = [(t, m) for t, ms in directions.items() for m in ms]
    header = ["stack", "Δp_task vs EW % [95% CI]↑", "verdict", "step time ×EW [95% CI]", "peak MiB"]
    header += [f"{t}/{m} {'↑' if d == 'higher' else '↓'} vs EW" for t, m in cols for d in [directions[t][m]]]
    rows: list[list[Any]] = []
    for s in result["stacks"]:
        t = s.get("timing") or {}
        ratio = "" if t.get("ratio_to_ew") is None else _span(t["ratio_to_ew"], t.get("ratio_to_ew_ci"), ".2f")
        row: list[Any] = [s["stack"]]
        if s["stack"] == EW:
            row += ["reference", "", "1", t.get("peak_mem_mib")]
            row += [f"{s['ew_metrics'][tk][m]:.4g}" for tk, m in cols]
        else:
            q = s["quality"]
            dp = q["delta_p_task"]
            row += ["" if dp is None else _span(dp["mean"], dp["ci"]), q["verdict"], ratio, t.get("peak_mem_mib")]
            row += [_span(q["metrics"][tk][m]["mean"], q["metrics"][tk][m]["ci"], "+.3g") for tk, m in cols]
        rows.append(row)
    return header, rows


def write_markdown(path: Path, result: Mapping[str, Any]) -> None:
    header, rows = table(result)
    lines = [f"# mtoframe compare: {result['config']}", "",
             f"{result['conclusion']}", "", *[f"- {v}" for v in result["verdicts"] + result["metric_verdicts"]], "",
             report.markdown_table(rows, header), "",
             f"Held-out split: **{result['split']}**, checkpoint: {result['checkpoint_rule']}; seeds "
             f"{result['seeds']}, {result['epochs']} epochs per run. Quality: per-seed paired differences to EW of the "
             "same seed (Δp_task: LibMTL's formula with EW as the baseline), mean and 95% Student-t interval over "
             "seeds; EW's row shows its mean metrics. Better/worse only where the interval excludes 0.",
             f"Step time: median over {result['timing_rounds']} interleaved rounds of the per-round ratio to EW "
             "(95% bootstrap interval) on the config's model and first batch; peak memory of one step."
             if result["timing_rounds"] else "Step time: not measured (--timing-rounds 0)."]
    if result["excluded_from_delta_p"]:
        excluded = ", ".join(result["excluded_from_delta_p"])
        lines.append(f"Left out of Δp_task (EW's value is 0 on some seed): {excluded}.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def picture(path: Path, result: Mapping[str, Any]) -> bool:
    """Quality gain (Δp_task vs EW) against time cost (step time ÷ EW's), both with 95% intervals."""
    plt = report.pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    for s in result["stacks"]:
        t = s.get("timing") or {}
        x = t.get("ratio_to_ew")
        if s["stack"] == EW:
            y, yerr = 0.0, None
        else:
            dp = s["quality"]["delta_p_task"]
            if dp is None:
                continue
            y, yerr = dp["mean"], _err(dp["mean"], dp["ci"])
        if x is None:
            x, xerr = 1.0, None  # not timed: drawn on the EW line, said in the label
        else:
            xerr = _err(x, t.get("ratio_to_ew_ci"))
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        ax.annotate(s["stack"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("step time ÷ EW's (paired ratio, 95% CI)")
    ax.set_ylabel("Δp_task vs EW, % (paired over seeds, 95% CI; higher is better)")
    ax.set_title(f"{result['config']}: {len(result['seeds'])} seeds, {result['split']} split", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _err(value: float, ci: Sequence[float] | None) -> list[list[float]] | None:
    if ci is None or any(v is None or math.isnan(v) for v in ci):
        return None
    return [[value - ci[0]], [ci[1] - value]]


def tensorboard_summary(log_dir: Path, result: Mapping[str, Any]) -> None:
    scalars: dict[str, float] = {}
    for s in result["stacks"]:
        t = s.get("timing") or {}
        if t.get("ratio_to_ew") is not None:
            scalars[f"compare/step_time_vs_ew/{s['stack']}"] = t["ratio_to_ew"]
        if s["stack"] != EW and s["quality"]["delta_p_task"] is not None:
            scalars[f"compare/delta_p_task_vs_ew/{s['stack']}"] = s["quality"]["delta_p_task"]["mean"]
    report.tensorboard_scalars(log_dir, scalars, text={"compare/verdicts": "\n\n".join(
        [result["conclusion"], *result["verdicts"]])})
