"""``mtoframe bench --compare OLD NEW``: per-stack change of the paired ratio to EW between two
timing runs (before and after a change, or two machines), with an interval and a verdict, as
pyperf's ``compare_to`` and asv's ``compare`` report theirs.

The compared quantity is the ratio to EW (on the runs' common headline clock), not milliseconds: a
ratio measured against EW in the same rounds is comparable across machines and loads, a step time
is not. The change is new/old of the medians of the per-round ratios; its interval resamples the
rounds of each run on its own (two runs' rounds are not paired). EW's own step time is shown on a
separate line for information and never decides a verdict.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import numpy as np

from ..errors import MtoError
from . import report, stats
from .speed import BASELINE


@attrs.frozen
class StackChange:
    stack: str
    old: float
    new: float
    change: stats.Estimate
    verdict: str


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """The timed records of a ``results.json`` by stack name (records with an error left out)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise MtoError(f"--compare: cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise MtoError(f"--compare: {path} is not JSON ({exc})") from exc
    if not isinstance(data, list):
        raise MtoError(f"--compare: {path} is not the results.json of a timing run (expected a list of records)")
    out = {}
    for rec in data:
        if not isinstance(rec, dict) or "stack" not in rec:
            raise MtoError(f"--compare: {path} has a record without a 'stack'")
        if rec.get("error") is not None:
            continue
        rounds = rec.get("rounds")
        if not isinstance(rounds, list) or not all(isinstance(x, dict) and {"wall_ms", "cpu_ms"} <= set(x)
                                                   for x in rounds):
            raise MtoError(f"--compare: {path}: record {rec['stack']!r} has no per-round 'rounds' list with "
                           f"'wall_ms' and 'cpu_ms' (written by an mtoframe bench older than the paired-ratio report?)")
        out[rec["stack"]] = rec
    if BASELINE not in out:
        raise MtoError(f"--compare: {path} has no timed {BASELINE!r} record")
    return out


def common_clock(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> str:
    """The runs' headline clock when they share it, else wall time (the one every run has)."""
    clocks = {run[BASELINE].get("run", {}).get("headline", "wall") for run in (old, new)}
    return clocks.pop() if len(clocks) == 1 else "wall"


def per_round_ratios(run: dict[str, dict[str, Any]], stack: str, clock: str) -> list[float]:
    return stats.per_round_ratios([x[f"{clock}_ms"] for x in run[stack]["rounds"]],
                                  [x[f"{clock}_ms"] for x in run[BASELINE]["rounds"]])


def compare(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], clock: str) -> list[StackChange]:
    """One change per stack timed in both runs, slowest change first; ratios to EW on ``clock``
    ('cpu' or 'wall'), from the raw per-round times."""
    changes = []
    for stack in sorted(set(old) & set(new) - {BASELINE}):
        a, b = per_round_ratios(old, stack, clock), per_round_ratios(new, stack, clock)
        est = stats.ratio_of_medians_ci(a, b)
        # the medians alone: their intervals are not shown, so no bootstrap is run for them
        changes.append(StackChange(stack, float(np.median(a)), float(np.median(b)), est,
                                   stats.change_verdict(est)))
    return sorted(changes, key=lambda c: -c.change.value)


def regressions(changes: Sequence[StackChange], pct: float) -> list[StackChange]:
    """Stacks slower beyond noise (interval of new/old above 1) by more than ``pct`` percent."""
    return [c for c in changes if c.verdict == "slower" and c.change.value > 1 + pct / 100]


def run_compare(old_path: Path, new_path: Path, *, fail_on_regression: float | None, stream: TextIO) -> int:
    """Print the comparison; 1 when ``fail_on_regression`` is set and a stack regressed beyond it."""
    if fail_on_regression is not None and fail_on_regression < 0:
        raise MtoError(f"--fail-on-regression must be >= 0 (a percentage), got {fail_on_regression}")
    old, new = load_results(old_path), load_results(new_path)

    def say(line: str = "") -> None:
        print(line, file=stream)

    say(f"mtoframe bench --compare: OLD {old_path}, NEW {new_path}")
    for key in ("workload",):
        a, b = old[BASELINE].get(key), new[BASELINE].get(key)
        if a != b:
            say(f"note: the runs' {key}s differ (OLD {a}, NEW {b}): ratios to EW of different workloads need "
                f"not agree")
    # results.json from before warm steps existed recorded none: those runs timed single steps
    warm = [r[BASELINE].get("run", {}).get("warm_steps", 0) for r in (old, new)]
    if warm[0] != warm[1]:
        say(f"note: the runs timed differently (OLD {warm[0]}, NEW {warm[1]} untimed steps before each timed one): "
            f"a few-ms step's ratio to EW moves with that alone (docs/BENCHMARKS.md)")
    clock = common_clock(old, new)
    if clock == "wall" and {r[BASELINE].get("run", {}).get("headline") for r in (old, new)} != {"wall"}:
        say("note: the runs' headline clocks differ; comparing wall-time ratios, which both recorded")
    say(f"ratios to EW on {'process CPU' if clock == 'cpu' else 'wall'} time, each run's rounds paired within it")
    changes = compare(old, new, clock)
    rows = [[c.stack, f"{c.old:.2f}", f"{c.new:.2f}", f"{c.change.value:.3f}",
             "-" if c.change.interval is None else f"[{c.change.low:.3f}, {c.change.high:.3f}]", c.verdict]
            for c in changes]
    say(report.table(rows, ["stack", "OLD × EW", "NEW × EW", "NEW / OLD", f"{stats.CONFIDENCE:.0%} CI", "verdict"],
                     align="lrrrll"))
    ew = stats.ratio_of_medians_ci([x["wall_ms"] for x in old[BASELINE]["rounds"]],
                                   [x["wall_ms"] for x in new[BASELINE]["rounds"]])
    interval = "" if ew.interval is None else f"[{ew.low:.3f}, {ew.high:.3f}]"
    say(f"\nEW's own step time NEW / OLD: {ew.value:.3f} {interval}"
        f" (absolute time depends on the machine and its load; informational, no verdict)")
    for label, names in (("only in OLD", sorted(set(old) - set(new))), ("only in NEW", sorted(set(new) - set(old)))):
        if names:
            say(f"{label}: {', '.join(names)}")
    counts = {v: sum(c.verdict == v for c in changes) for v in ("slower", "faster", "same within noise")}
    say(f"verdicts: {counts['slower']} slower, {counts['faster']} faster, {counts['same within noise']} same within "
        f"noise (slower/faster: the {stats.CONFIDENCE:.0%} interval of NEW / OLD excludes 1)")
    if fail_on_regression is None:
        return 0
    bad = regressions(changes, fail_on_regression)
    if bad:
        say(f"REGRESSION beyond {fail_on_regression:g}% and beyond noise: "
            + ", ".join(f"{c.stack} ({(c.change.value - 1):+.1%})" for c in bad))
        return 1
    say(f"no regression beyond {fail_on_regression:g}% and beyond noise")
    return 0
