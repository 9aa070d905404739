"""Whether a contender's place in the build order moves its step time (issue 17; not a test).

``mtoframe bench`` builds its contenders one after another (EW first, then the named stacks in
order, ``ew#2``, then the peers) and times them in shuffled, interleaved rounds. Identical
contenders should then time alike whatever their place. This script builds the named stacks in
the order given (repeat a name to time identical copies; each gets its own fresh model and
optimiser, as in ``mtoframe bench``) on the ``manytask`` or ``scenes`` workload, runs them
interleaved, and prints each one's median step time and its ratio to the first-built contender
(median of per-round ratios, 95% bootstrap interval), CPU time, one thread.

    python benchmarks/creation_order.py [--stacks ew,ew,ew,ew,ew,ew] [--tasks 10 | --scenes] [--rounds 80]
        [--throwaway]

``--throwaway`` builds (and steps once) one more EW trainer before the timed ones, never timed and
kept alive to the end, as ``mtoframe bench`` does. ``--renew-first params`` gives the first-built
trainer new parameter objects (new ``nn.Parameter``s and Adam state, values copied) after the others
are built; ``--renew-first modules`` new module objects around the same parameters: which of its
objects carry the effect. The last line is the mean of the later-built contenders' ratios (one
number per process, for comparing runs).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any

from _shared import fmt
from torch import nn

from mtoframe.bench.speed import stack_contender
from mtoframe.bench.stats import paired_ratio_ci
from mtoframe.bench.threads import limit_threads
from mtoframe.bench.timing import run_interleaved
from mtoframe.bench.workloads import manytask_workload, scenes_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", default="ew,ew,ew,ew,ew,ew", help="comma-separated methods, built in this order")
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--scenes", action="store_true", help="the scenes Show's model and batch instead of manytask")
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--throwaway", action="store_true", help="build one untimed EW trainer first")
    ap.add_argument("--renew-first", choices=("params", "modules"),
                    help="replace the first-built trainer's parameter or module objects after all are built")
    args = ap.parse_args()
    names = [n.strip() for n in args.stacks.split(",") if n.strip()]
    if len(names) < 2 or args.rounds < 2:
        ap.error("--stacks needs at least two entries and --rounds at least 2")
    limit_threads(1)
    w = scenes_workload(size=64, batch=8, width=32) if args.scenes else manytask_workload(tasks=args.tasks)
    untimed = stack_contender(w, ["ew"], lr=1e-4) if args.throwaway else None
    if untimed is not None:
        untimed.step()
    contenders = []
    for i, name in enumerate(names):
        c = stack_contender(w, [name], lr=1e-4, name=f"{i}:{name}")
        c.step()  # as mtoframe bench does right after building each
        contenders.append(c)
    if args.renew_first:
        renew = _renew_parameters if args.renew_first == "params" else _renew_modules
        renew(contenders[0].info["trainer"])
        contenders[0].step()
    times = run_interleaved(contenders, rounds=args.rounds, warmup=3).cpu
    first = contenders[0].name
    print(f"{w.name}, {args.rounds} interleaved rounds, CPU time, one thread; built in this order:")
    ratios = [paired_ratio_ci(times[c.name], times[first]) for c in contenders]
    for c, r in zip(contenders, ratios, strict=True):
        print(f"{c.name:<14} {statistics.median(times[c.name]):8.2f} ms   vs first built {fmt(r)}")
    print(f"mean ratio of the later-built to the first built: {statistics.fmean(r.value for r in ratios[1:]):.3f}")
    del untimed  # alive until the timing is over


def _renew_modules(trainer: Any) -> None:
    """New module objects (a deep copy that keeps the same Parameter objects) in the trainer."""
    params = list(trainer.model.parameters())
    trainer.model = copy.deepcopy(trainer.model, memo={id(p): p for p in params})
    trainer.stack.encoder = trainer.model.encoder


def _renew_parameters(trainer: Any) -> None:
    """New Parameter objects with the same values, and the optimiser's state moved onto them."""
    new: dict[int, nn.Parameter] = {}
    for module in trainer.model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                new[id(p)] = module._parameters[name] = nn.Parameter(p.detach().clone())
    opt = trainer.optimizer
    state = {new[id(p)]: {k: v.clone() if hasattr(v, "clone") else v for k, v in opt.state[p].items()}
             for g in opt.param_groups for p in g["params"]}
    for g in opt.param_groups:
        g["params"] = [new[id(p)] for p in g["params"]]
    opt.state.clear()
    opt.state.update(state)
    trainer._shared = [new[id(p)] for p in trainer._shared]
    trainer._heads = {t: [new[id(p)] for p in ps] for t, ps in trainer._heads.items()}
    trainer.stack._task_seen.clear()


if __name__ == "__main__":
    main()
