"""What ``mtoframe bench`` (timing) prints and writes: the table sorted by the paired wall-time
ratio to EW with its interval, the CPU-time ratio beside it, the run's noise check, the chart with
error bars, ``results.json`` and TensorBoard scalars."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import report, stats
from .speed import BASELINE_AGAIN

#: marks a ratio below 1 of a stack that does EW's work plus more
BELOW_MARK = "†"

CLOCKS = {"cpu": "CPU time (one thread on CPU: the same work as wall time, without the waits for a core "
                "that other jobs cause)", "wall": "wall time"}


def header(clock: str) -> list[str]:
    mark = {k: " (headline)" if k == clock else "" for k in ("wall", "cpu")}
    return ["stack", f"× EW wall{mark['wall']}", "95% CI wall", f"× EW CPU{mark['cpu']}", "95% CI CPU", "wall ms",
            "CPU ms", "wall IQR ms", "peak MiB", "noise"]


def ok_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without an error, sorted by the headline ratio."""
    return sorted((r for r in records if r.get("error") is None), key=lambda r: r["ratio_to_ew"])


def _ratio(r: dict[str, Any], key: str) -> str:
    mark = BELOW_MARK if "below_ew" in r["noise"] and r[key] < 1 else ""
    return f"{r[key]:.2f}{mark}"


def _ci(ci: Sequence[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def rows(records: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [[r["stack"], _ratio(r, "ratio_to_ew_wall"), _ci(r["ratio_to_ew_wall_ci"]), _ratio(r, "ratio_to_ew_cpu"),
             _ci(r["ratio_to_ew_cpu_ci"]), r["ms_median"], r["cpu_ms_median"], r["wall_summary"]["iqr_ms"],
             r["peak_mem_mib"], ",".join(r["noise"]) or "-"] for r in ok_records(records)]


def explanation(records: Sequence[dict[str, Any]]) -> str:
    run = records[0]["run"]
    ok = ok_records(records)
    mem = (f"{ok[0]['mem_method']}, measured in the last warm-up round in {run['memory_s']:.0f} s "
           f"({run['memory_s'] / run['elapsed_s']:.0%} of the {run['elapsed_s']:.0f} s run)"
           if ok and ok[0]["mem_method"] else "not measured")
    warm = run.get("warm_steps", 0)  # results.json written before warm steps existed had none
    plural = "s" if warm > 1 else ""
    after = f", each timed step right after {warm} untimed step{plural} of the same stack" if warm else ""
    return (f"× EW = median over {run['rounds']} interleaved rounds (after {run['warmup']} warm-up{after}) of the "
            f"stack's step time / EW's step time in the same round, with a {run['confidence']:.0%} bootstrap "
            f"interval over rounds; CPU = this process's CPU time per step. The headline (ratio_to_ew, sort "
            f"order, chart) is {CLOCKS[run['headline']]}. {BASELINE_AGAIN} is a second copy of EW timed in every "
            f"round: its ratio shows the run's noise. Peak MiB: {mem}.")


def noise_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """The run's noise check, a NOISY line with advice when the intervals cannot rank neighbours,
    and a line for every ratio below 1 that must be noise."""
    ok = ok_records(records)
    if not ok:
        return []
    run, env = ok[0]["run"], ok[0]["environment"]
    lines = []
    again = next((r for r in ok if r["stack"] == BASELINE_AGAIN), None)
    widths = {r["stack"]: _half_width(r) for r in ok}
    widest = max(widths, key=lambda k: widths[k])
    if again is not None:
        lines.append(f"noise check: EW against itself {again['ratio_to_ew']:.3f}× {_ci(again['ratio_to_ew_ci'])} "
                     f"(1 when the machine is steady); widest interval ±{widths[widest]:.1%} ({widest}).")
    reasons = []
    if widths[widest] > stats.NOISY_HALF_WIDTH:
        reasons.append(f"intervals up to ±{widths[widest]:.0%} ({widest}) exceed ±{stats.NOISY_HALF_WIDTH:.0%}")
    if again is not None and (again["ratio_to_ew_ci"] is None
                              or max(abs(x - 1) for x in again["ratio_to_ew_ci"]) > stats.NOISY_HALF_WIDTH):
        reasons.append(f"EW against itself reaches {_ci(again['ratio_to_ew_ci'])}, beyond 1 ± "
                       f"{stats.NOISY_HALF_WIDTH:.0%}")
    if reasons:
        load = env.get("load_average_1min")
        load_s = f"load average {load:.1f} on {env.get('cpu_count')} cores" if load is not None else "load unknown"
        threads = env.get("torch_threads")
        advice = [f"--threads 1 (this run: {threads})"] if threads != 1 else []
        advice += [f"more --rounds (this run: {run['rounds']}; intervals narrow about as 1/sqrt(rounds))",
                   f"a quieter machine ({load_s})"]
        lines.append(f"NOISY RUN: {'; '.join(reasons)}: stacks whose ratios differ by less than that cannot be "
                     f"ranked. To steady it: {', '.join(advice)}.")
    below = [r for r in ok if "below_ew" in r["noise"]]
    if below:
        names = ", ".join(r["stack"] for r in below)
        lines.append(f"{BELOW_MARK} below 1× EW: {names}. Each does EW's forward, backward and optimiser step plus "
                     f"its own work, so a ratio below 1 is measurement noise, not a speed-up; read it as 1.")
        biased = [r["stack"] for r in below if r["ratio_to_ew_ci"] is not None and r["ratio_to_ew_ci"][1] < 1]
        if biased:
            lines.append(f"  whole interval below 1 for {', '.join(biased)}: a systematic effect of "
                         f"the machine (cache, frequency, memory placement), not random noise; rerun with "
                         f"--threads 1 on a quieter machine before reading differences of this size.")
    return lines


def peer_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line with every stack's paired ratio to its peer implementation (``--peers``)."""
    peered = [r for r in ok_records(records) if r.get("ratio_to_peer") is not None]
    if not peered:
        return []
    return ["against the peer (median over rounds of the per-round ratio, headline clock, 95% CI): " + "; ".join(
        f"{r['stack']} / {r['peer']} {r['ratio_to_peer']:.2f}× {_ci(r['ratio_to_peer_ci'])}" for r in peered)]


def _half_width(r: dict[str, Any]) -> float:
    ci = r["ratio_to_ew_ci"]
    return math.inf if ci is None else (ci[1] - ci[0]) / 2 / r["ratio_to_ew"]


def write_speed_report(records: Sequence[dict[str, Any]], out: Path, *, title: str, memory: bool,
                       stream: TextIO) -> None:
    """Print the table and the noise lines; write ``results.json``, ``results.md``, ``bench.png``
    (with the plots extra) and TensorBoard scalars under ``out``."""
    ok = ok_records(records)
    table_rows = rows(records)
    head = header(records[0]["run"]["headline"])
    notes = [explanation(records), *noise_lines(records), *peer_lines(records)]
    not_timed = [f"not timed: {r['stack']}: {r['error']}" for r in records if r.get("error") is not None]
    print(file=stream)
    print(report.table(table_rows, head, align="lrlrlrrrrl"), file=stream)
    print(file=stream)
    for line in notes + not_timed:
        print(line, file=stream)
    report.write_json(out / "results.json", list(records))
    (out / "results.md").write_text(report.markdown_table(table_rows, head) + "\n\n"
                                    + "\n\n".join(notes + not_timed) + "\n")
    labels = [r["stack"] + (f" {BELOW_MARK} noise" if "below_ew" in r["noise"] else "") for r in ok]
    clock = records[0]["run"]["headline"]
    panels = [report.Panel([r[f"ratio_to_ew_{k}"] for r in ok],
                           f"{name} / EW's in the same round (median, 95% CI)" + (", headline" if k == clock else ""),
                           errors=_error_bars(ok, f"ratio_to_ew_{k}"), reference=1.0)
              for k, name in sorted((("cpu", "CPU time"), ("wall", "wall time")), key=lambda kn: kn[0] != clock)]
    if memory:
        panels.append(report.Panel([r["peak_mem_mib"] for r in ok], "peak memory of a step (MiB)"))
    png = report.bar_panels(out / "bench.png", labels, panels, title=title)
    scalars: dict[str, float] = {}
    for r in ok:
        for key in ("ratio_to_ew", "ratio_to_ew_wall", "ratio_to_ew_cpu", "ms_median", "cpu_ms_median", "peak_mem_mib"):
            scalars[f"bench/{key}/{r['stack']}"] = r[key]
        if r["ratio_to_ew_ci"] is not None:
            scalars[f"bench/ratio_to_ew_low/{r['stack']}"], scalars[f"bench/ratio_to_ew_high/{r['stack']}"] = \
                r["ratio_to_ew_ci"]
    report.tensorboard_scalars(out / "tensorboard", scalars,
                               series={f"bench/step_ms/{r['stack']}": [x["wall_ms"] for x in r["rounds"]] for r in ok},
                               text={"bench/table": report.markdown_table(table_rows, head)})
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}" + (f", {out / 'bench.png'}" if png else "")
          + f" and TensorBoard scalars in {out / 'tensorboard'}", file=stream)


def _error_bars(ok: Sequence[dict[str, Any]], key: str) -> list[list[float]]:
    """matplotlib's asymmetric ``xerr`` (distances below and above), 0 where there is no interval."""
    ci = [r[f"{key}_ci"] for r in ok]
    return [[0.0 if c is None else r[key] - c[0] for r, c in zip(ok, ci, strict=True)],
            [0.0 if c is None else c[1] - r[key] for r, c in zip(ok, ci, strict=True)]]
