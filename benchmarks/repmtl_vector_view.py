"""Rep-MTL's vector saliency into CSA's one-node form directly (current) against through the two
views ``s.unsqueeze(-1)[..., 0]`` it passed through before `8cfb197`, paired (issue 17; not a test).

Both contenders are Rep-MTL trainers on ``manytask``; around the old one's steps the one-node
form is fed the view of the view, whose backward adds a select node (a saliency-sized zero fill
and copy) and an unsqueeze node. They are timed among the issue's Show contenders (EW, UPGrad,
MGDA, PCGrad, Nash-MTL, CAGrad and a second EW; ``--peers``: TorchJD's too), interleaved, one
thread. Printed: new / old and each against Nash-MTL (median of per-round ratios, 95% bootstrap
interval, CPU time).

    python benchmarks/repmtl_vector_view.py [--tasks 10] [--rounds 60] [--warm-steps 1] [--peers]
"""

from __future__ import annotations

import argparse
from typing import Any

import attrs
import mtoframe_repmtl.csa as csa_mod
from _shared import fmt

from mtoframe import create
from mtoframe.bench.speed import adam, stack_contender
from mtoframe.bench.stats import paired_ratio_ci
from mtoframe.bench.threads import limit_threads
from mtoframe.bench.timing import Contender, run_interleaved
from mtoframe.bench.workloads import manytask_workload

SHOW = ("ew", "upgrad", "mgda", "pcgrad", "nashmtl", "cagrad", "repmtl")
CURRENT = csa_mod._VectorAnchorCSA


class _ThroughViews:
    """The one-node form, fed as before: the ``[B, T, C, 1]`` view's ``[..., 0]`` view."""

    @staticmethod
    def apply(s: Any, *args: Any) -> Any:
        return CURRENT.apply(s.unsqueeze(-1)[..., 0], *args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--warm-steps", type=int, default=1)
    ap.add_argument("--peers", action="store_true", help="TorchJD's peers beside, as in the Show")
    args = ap.parse_args()
    limit_threads(1)
    w = manytask_workload(tasks=args.tasks)
    stack_contender(w, ["ew"], lr=1e-4).step()  # not the first built, as in mtoframe bench
    cs = [stack_contender(w, [n], lr=1e-4) for n in SHOW]
    old = stack_contender(w, ["repmtl"], lr=1e-4, name="repmtl-old")

    def old_step() -> object:
        csa_mod._VectorAnchorCSA = _ThroughViews  # type: ignore[misc, assignment]
        try:
            return old.step()
        finally:
            csa_mod._VectorAnchorCSA = CURRENT  # type: ignore[misc]

    cs += [Contender("repmtl-old", old_step), stack_contender(w, ["ew"], lr=1e-4, name="ew#2")]
    if args.peers:
        from mtoframe.bench.peers import torchjd_contenders

        opts = {n: attrs.asdict(create(n).options) for n in SHOW}
        peers, _ = torchjd_contenders(w, list(SHOW), lr=1e-4, make_optimizer=adam, options=opts)
        cs += peers
    for c in cs:
        c.step()
    times = run_interleaved(cs, rounds=args.rounds, warmup=3, warm_steps=args.warm_steps).cpu

    def ratio(a: str, b: str) -> str:
        return fmt(paired_ratio_ci(times[a], times[b]))

    print(f"manytask T = {args.tasks}, {len(cs)} contenders, {args.rounds} rounds, warm steps {args.warm_steps}, "
          "CPU time, one thread")
    print(f"repmtl new / old: {ratio('repmtl', 'repmtl-old')}")
    print(f"vs nashmtl: new {ratio('repmtl', 'nashmtl')}   old {ratio('repmtl-old', 'nashmtl')}")


if __name__ == "__main__":
    main()
