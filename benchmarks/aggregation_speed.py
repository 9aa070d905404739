"""Per-call aggregation time on bare matrices, mtoframe vs TorchJD side by side (not a test).

For every method (``--methods``) and shape (``--shapes``), ``mtoframe.aggregate(method, G)`` and
TorchJD's aggregator of the same method (``torchjd.aggregation.<Class>(...)(G)``, built as
``mtoframe bench --peers torchjd`` builds it: :data:`mtoframe.bench.peers.TORCHJD_AGGREGATORS`)
are timed in interleaved rounds (:func:`mtoframe.bench.timing.run_interleaved`: every contender
once per round, in shuffled order). Each call gets a *different* matrix (``--variants`` of them,
in rotation, the same sequence for both), so warm-started methods cannot skip their solve.
Reported: median ms of each, and the median over rounds of the per-round ratio
mtoframe / TorchJD with its 95% bootstrap interval (:func:`mtoframe.bench.stats.paired_ratio_ci`),
for wall and process CPU time, against the goal of issue 16 (1.0, or 0.5 for the
convex-programming methods). Two floors are timed in the same rounds: ``G Gᵀ`` and ``wᵀG``, the
only work proportional to the number of parameters.

    python benchmarks/aggregation_speed.py [--rounds 40] [--threads 1]
        [--methods mgda,upgrad,imtlg,pcgrad,alignedmtl,nashmtl,cagrad] [--shapes 3x1000000,10x100000]
        [--conflict 0.3]
"""

from __future__ import annotations

import argparse
import functools
import os
import warnings
from collections.abc import Callable

import torch
from _shared import rotating

import mtoframe
from mtoframe.bench.peers import REQUIRED_DEFAULTS, TORCHJD_AGGREGATORS, require_torchjd
from mtoframe.bench.stats import paired_ratio_ci
from mtoframe.bench.threads import limit_threads
from mtoframe.bench.timing import Contender, run_interleaved
from mtoframe.numerics import combine

#: issue 16's goal: mtoframe / TorchJD at most this
GOALS = {"mgda": 1.0, "upgrad": 1.0, "imtlg": 1.0, "pcgrad": 1.0, "alignedmtl": 1.0, "nashmtl": 0.5, "cagrad": 0.5}
DEFAULT_SHAPES = "3x1000000,10x100000"


def matrices(T: int, P: int, n: int, conflict: float = 0.0, seed: int = 0) -> list[torch.Tensor]:
    """Correlated random float32 gradients (a shared component plus task noise), like real ones;
    the first ``conflict·T`` rows get the shared component with the opposite sign, so that
    constrained solvers (MGDA, UPGrad) have active constraints to find."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.ones(T, 1)
    sign[: round(conflict * T)] = -1.0
    return [0.5 * sign * torch.randn(1, P, generator=g) + torch.randn(T, P, generator=g) for _ in range(n)]


def gram(g: torch.Tensor) -> torch.Tensor:
    return g @ g.T


def torchjd_aggregator(name: str, T: int) -> Callable[[torch.Tensor], torch.Tensor]:
    aggregation = require_torchjd()
    cls_name, _ = TORCHJD_AGGREGATORS[name]
    kwargs = dict(REQUIRED_DEFAULTS.get(cls_name, {}))
    if cls_name == "NashMTL":
        kwargs["n_tasks"] = T
    agg: Callable[[torch.Tensor], torch.Tensor] = getattr(aggregation, cls_name)(**kwargs)
    return agg


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        t, _, p = item.partition("x")
        if not (t.isdigit() and p.isdigit()):
            raise SystemExit(f"--shapes takes TxP pairs separated by commas (e.g. {DEFAULT_SHAPES}), got {item!r}")
        shapes.append((int(t), int(p)))
    return shapes


def fmt_ratio(times: list[float], baseline: list[float]) -> str:
    est = paired_ratio_ci(times, baseline)
    return f"{est.value:5.2f} [{est.low:.2f}, {est.high:.2f}]" if est.low is not None else f"{est.value:5.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--methods", default=",".join(GOALS))
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated TxP, e.g. 40x25000,10x100000")
    ap.add_argument("--conflict", type=float, default=0.0,
                    help="fraction of rows whose shared component is flipped (conflicting gradients)")
    args = ap.parse_args()
    if args.threads:
        limit_threads(args.threads)
    names = [n for n in args.methods.split(",") if n]
    unknown = [n for n in names if n not in TORCHJD_AGGREGATORS]
    if unknown:
        raise SystemExit(f"no TorchJD peer for {unknown}; methods with one: {sorted(TORCHJD_AGGREGATORS)}")
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32; {args.rounds} interleaved rounds, "
          f"{args.variants} matrices in rotation, conflict {args.conflict}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("ratio = median over rounds of mtoframe/TorchJD in the same round [95% bootstrap interval]")
    for T, P in parse_shapes(args.shapes):
        gs = matrices(T, P, args.variants, args.conflict)
        w = torch.full((T,), 1.0 / T)
        contenders = [Contender("G Gᵀ", rotating(gram, gs), kind="floor"),
                      Contender("wᵀG", rotating(functools.partial(combine, w), gs), kind="floor")]
        for name in names:
            method = mtoframe.create(name)
            contenders.append(Contender(name, rotating(functools.partial(mtoframe.aggregate, method), gs)))
            contenders.append(Contender(f"torchjd:{name}", rotating(torchjd_aggregator(name, T), gs), kind="torchjd"))
        with warnings.catch_warnings():
            # a solver fallback is the method's documented behaviour; the timing is what is measured here
            warnings.simplefilter("ignore")
            times = run_interleaved(contenders, rounds=args.rounds, warmup=args.warmup)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.wall.items()}
        print(f"\n{T}x{P:,}   floors: G Gᵀ {med['G Gᵀ']:.3f} ms, wᵀG {med['wᵀG']:.3f} ms")
        print(f"  {'method':11s} {'mtoframe':>9s} {'TorchJD':>9s}  {'ratio (wall)':>19s}  {'ratio (CPU)':>19s}  goal")
        for name in names:
            ours, theirs = f"{name}", f"torchjd:{name}"
            wall = fmt_ratio(times.wall[ours], times.wall[theirs])
            cpu = fmt_ratio(times.cpu[ours], times.cpu[theirs])
            goal = GOALS.get(name, 1.0)
            print(f"  {name:11s} {med[ours]:9.3f} {med[theirs]:9.3f}  {wall:>19s}  {cpu:>19s}  ≤ {goal}")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
