"""Where Rep-MTL's step time goes, term by term, beside EW and Nash-MTL (issue 17; not a test).

One trainer per contender on identical copies of a workload's model, timed in interleaved rounds
(``benchmarks/_shared.step_times``). Contenders:

- ``ew``;
- ``saliency``: the differentiable saliency and a trivial second-order regulariser
  (``1e-3 · mean(S²)``), i.e. the saliency call and the second-order backward through the heads
  that any saliency regulariser pays, without TSR or CSA (on large maps its ``mean(S²)`` can cost
  more than TSR, so ``repmtl:tsr`` is the tighter bound there);
- ``repmtl:tsr`` and ``repmtl:csa`` (one term each), ``repmtl`` (both);
- ``nashmtl``.

Printed: median ms per step and the median over rounds of the per-round ratio to EW and to
Nash-MTL, with 95% bootstrap intervals.

    python benchmarks/repmtl_terms.py [--tasks 10 | --scenes] [--rounds 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Literal

from _shared import fmt, paired_ratio, step_times

import mtoframe
from mtoframe.bench.speed import adam
from mtoframe.bench.threads import limit_threads
from mtoframe.bench.workloads import manytask_workload, scenes_workload


class SaliencyFloor(mtoframe.Method):
    """The saliency with ``create_graph`` and a regulariser whose own cost is negligible."""

    name = "saliency-floor"
    summary = "differentiable saliency plus 1e-3·mean(S²) (benchmark fixture)"
    paper = "benchmark fixture"
    roles = mtoframe.Role.REGULARISER

    @property
    def rep_grads(self) -> Literal["none", "plain", "differentiable"]:
        return "differentiable"

    @mtoframe.hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        ctx.add_loss("saliency", 1e-3 * ctx.rep_grads(differentiable=True).square().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10, help="tasks of the manytask workload")
    ap.add_argument("--scenes", action="store_true", help="the scenes workload of the T = 3 goal instead")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    limit_threads(args.threads)
    w = (scenes_workload(size=64, batch=8, width=32) if args.scenes else manytask_workload(tasks=args.tasks))
    methods: dict[str, list[mtoframe.Method]] = {
        "ew": [mtoframe.create("ew")],
        "saliency": [SaliencyFloor()],
        "repmtl:tsr": [mtoframe.create("repmtl", use_csa=False)],
        "repmtl:csa": [mtoframe.create("repmtl", use_tsr=False)],
        "repmtl": [mtoframe.create("repmtl")],
        "nashmtl": [mtoframe.create("nashmtl")],
    }
    steps = {}
    for name, stack in methods.items():
        model = w.fresh_model()
        trainer = mtoframe.Trainer(model, w.tasks, stack, optimizer=adam(model.parameters(), 1e-4), progress=False)
        steps[name] = lambda t=trainer: t.step(w.batch)
    times = step_times(steps, rounds=args.rounds, repeat=1, warmup=3)
    what = "scenes (T = 3, Z 128×16×16, batch 8)" if args.scenes else f"manytask (T = {args.tasks}, batch 64)"
    print(f"{what}, {args.threads} thread(s), {args.rounds} interleaved rounds; ratios: median of per-round "
          "ratios [95% bootstrap interval]")
    print(f"{'contender':<12} {'ms/step':>8} {'vs EW':>22} {'vs Nash-MTL':>22}")
    for name, ts in times.items():
        print(f"{name:<12} {statistics.median(ts):8.2f} {fmt(paired_ratio(times, name, 'ew')):>22} "
              f"{fmt(paired_ratio(times, name, 'nashmtl')):>22}")


if __name__ == "__main__":
    main()
