"""``G Gᵀ`` as one product against :func:`mtoframe.numerics.gram`'s column blocks (not a test).

For each shape (``--shapes``) and thread count (``--threads``), the one product ``G @ G.T`` and the
blocked sum (blocks of :data:`~mtoframe.numerics.GRAM_BLOCK_BYTES`, forced here whatever the
shape) are timed in interleaved rounds (:func:`mtoframe.bench.timing.run_interleaved`) on a
rotation of matrices, as ``benchmarks/aggregation_speed.py`` times the methods. Printed: the
median ms of each, the median over rounds of the per-round ratio blocked / one product with its
95% bootstrap interval, and which of the two :func:`~mtoframe.numerics.gram` uses for that shape
and thread count. This is the measurement behind ``GRAM_BLOCKED_ROWS`` and the one-thread rule.

    python benchmarks/gram_speed.py [--rounds 30] [--threads 1,2]
        [--shapes 2x1000000,3x1000000,5x400000,10x100000,12x170000,16x100000,40x25000,10x30000]
"""

from __future__ import annotations

import argparse
import os

import torch
from _shared import rotating

from mtoframe import numerics
from mtoframe.bench.stats import paired_ratio_ci
from mtoframe.bench.threads import limit_threads
from mtoframe.bench.timing import Contender, run_interleaved

DEFAULT_SHAPES = "2x1000000,3x1000000,5x400000,10x100000,12x170000,16x100000,40x25000,10x30000"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, each run in turn")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated TxP")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"torch {torch.__version__}, float32, {args.rounds} interleaved rounds, {args.variants} matrices in "
          f"rotation; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("ratio = median over rounds of blocked / one product in the same round [95% bootstrap interval]")
    print(f"{'threads':>7s} {'shape':>12s} {'one (ms)':>9s} {'blocked':>9s}  {'ratio':>19s}  gram() uses")
    for threads in (int(t) for t in args.threads.split(",")):
        limit_threads(threads)
        for item in args.shapes.split(","):
            t, _, p = item.partition("x")
            if not (t.isdigit() and p.isdigit()):
                raise SystemExit(f"--shapes takes TxP pairs separated by commas, got {item!r}")
            gen = torch.Generator().manual_seed(0)
            gs = [torch.randn(int(t), int(p), generator=gen) for _ in range(args.variants)]
            times = run_interleaved([Contender("one", rotating(lambda g: g @ g.T, gs)),
                                     Contender("blocked", rotating(numerics.gram_in_blocks, gs))],
                                    rounds=args.rounds, warmup=args.warmup)
            med = {k: sorted(v)[len(v) // 2] for k, v in times.wall.items()}
            est = paired_ratio_ci(times.wall["blocked"], times.wall["one"])
            ratio = f"{est.value:5.2f} [{est.low:.2f}, {est.high:.2f}]" if est.low is not None else f"{est.value:5.2f}"
            uses = "blocks" if numerics._blocked(gs[0]) else "one product"
            print(f"{threads:7d} {item:>12s} {med['one']:9.3f} {med['blocked']:9.3f}  {ratio:>19s}  {uses}")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
