"""Two stacks of one ``mtoframe bench`` timing run against each other (not a test).

``results.json`` keeps every stack's per-round times; this prints the median over rounds of
``A``'s time divided by ``B``'s time in the same round, with its 95% bootstrap interval (the
statistic of ``ratio_to_ew``, for any pair), and the two median step times.

    python benchmarks/paired_ratio.py RESULTS.json A B [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _shared import fmt, paired_ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    records = {r["stack"]: r for r in json.loads(args.results.read_text()) if r.get("error") is None}
    missing = [n for n in (args.a, args.b) if n not in records]
    if missing:
        sys.exit(f"{args.results} has no timed stack {missing}; it has {sorted(records)}")
    times = {n: [x[f"{args.clock}_ms"] for x in records[n]["rounds"]] for n in (args.a, args.b)}
    median = "cpu_ms_median" if args.clock == "cpu" else "ms_median"
    print(f"{args.a} / {args.b} ({args.clock} time): {fmt(paired_ratio(times, args.a, args.b))}; "
          f"medians {records[args.a][median]:.2f} and {records[args.b][median]:.2f} ms")


if __name__ == "__main__":
    main()
