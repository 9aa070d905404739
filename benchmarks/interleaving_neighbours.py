"""How the other contenders of an interleaved run move a ratio (issue 17; not a test).

``mtoframe bench`` times every contender once per round in shuffled order, so between two steps
of one trainer the others run. A step is then faster when other contenders run the same code
(the engine's per-task gradients, the solvers' Python) than when its code is its own. This
script times ``ew``, ``nashmtl`` and ``repmtl`` on the ``manytask`` workload with extra
contenders beside them and prints the three medians and ``repmtl / nashmtl`` (median of
per-round ratios, 95% bootstrap interval), CPU time, one thread:

- ``--extra NAME ...``: one more trainer of each named method in the same rounds (``nashmtl``
  gives Nash-MTL a twin, ``repmtl`` Rep-MTL one);
- ``--show``: the Show's contenders instead (its other methods and TorchJD's peers, as
  ``mtoframe bench --tasks 10 --peers torchjd``);
- ``--block K``: each contender runs K consecutive steps per round and the last K − 1 are timed:
  its own previous step just ran, as in a training run of one method (steady state).

    python benchmarks/interleaving_neighbours.py [--tasks 10] [--rounds 50] [--extra NAME ...]
        [--show] [--block K]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import attrs
from _shared import fmt

from mtoframe import create
from mtoframe.bench.speed import adam, stack_contender
from mtoframe.bench.stats import paired_ratio_ci
from mtoframe.bench.threads import limit_threads
from mtoframe.bench.workloads import manytask_workload

SHOW_OTHERS = ("upgrad", "mgda", "pcgrad", "cagrad")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--extra", nargs="*", default=[], help="methods given one more trainer each")
    ap.add_argument("--show", action="store_true", help="the Show's other methods and TorchJD's peers beside")
    ap.add_argument("--block", type=int, default=1, help="consecutive steps per contender and round")
    args = ap.parse_args()
    if args.block < 1 or args.rounds < 2:
        ap.error("--block must be >= 1 and --rounds >= 2")
    limit_threads(1)
    w = manytask_workload(tasks=args.tasks)
    steps: dict[str, Callable[[], object]] = {}
    for name in ("ew", "nashmtl", "repmtl"):
        steps[name] = stack_contender(w, [name], lr=1e-4).step
    for i, name in enumerate(args.extra):
        steps[f"{name}#{i + 2}"] = stack_contender(w, [name], lr=1e-4).step
    if args.show:
        from mtoframe.bench.peers import torchjd_contenders

        names = ["ew", *SHOW_OTHERS, "nashmtl", "repmtl"]
        for name in SHOW_OTHERS:
            steps[name] = stack_contender(w, [name], lr=1e-4).step
        opts = {n: attrs.asdict(create(n).options) for n in names}
        peers, _ = torchjd_contenders(w, names, lr=1e-4, make_optimizer=adam, options=opts)
        steps.update({p.name: p.step for p in peers})
    times = _rounds(steps, rounds=args.rounds, block=args.block, warmup=3)
    r = paired_ratio_ci(times["repmtl"], times["nashmtl"])
    timed = "all" if args.block == 1 else f"the last {args.block - 1}"
    print(f"manytask T = {args.tasks}, {len(steps)} contenders, {args.rounds} rounds of {args.block} step(s) each "
          f"({timed} timed), CPU ms per step, one thread")
    print("medians: " + ", ".join(f"{n} {statistics.median(times[n]):.2f}" for n in ("ew", "nashmtl", "repmtl")))
    print(f"repmtl / nashmtl: {fmt(r)}")


def _rounds(steps: dict[str, Callable[[], object]], *, rounds: int, block: int, warmup: int) -> dict[str, list[float]]:
    """CPU ms per step of each contender per round (the mean of its timed steps), in shuffled order."""
    order = list(steps)
    rng = random.Random(0)
    out: dict[str, list[float]] = {n: [] for n in steps}
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            ts = []
            for _ in range(block):
                t0 = time.process_time()
                steps[name]()
                ts.append((time.process_time() - t0) * 1e3)
            if r >= warmup:
                out[name].append(statistics.mean(ts[1:] if block > 1 else ts))
    return out


if __name__ == "__main__":
    main()
