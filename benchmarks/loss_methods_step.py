"""Step time of each loss-level method relative to EW (issue 4), measured side by side.

A small encoder-dominant conv model (most compute in the shared encoder, 1×1-conv heads), one
trainer per method on identical copies, interleaved rounds (every round times every method in
turn, so drift and noise hit all alike); ratios are medians of per-round ratios. Epoch-level methods are
primed into their active phase (DWA with two epochs of history, STCH past its warm-up with a
nadir, GradNorm balancing from the first step) so the timed path is the one used in training.

Goals: ratio ≤ 1.05 for every method but FAMO (≤ 1.4: one extra no-grad forward) and GradNorm
(T extra partial backward passes to the balanced layer). ExcessMTL is a gradient-level method
(per-task gradients) and is listed for reference only.

    python benchmarks/loss_methods_step.py [--rounds 7] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import mtoframe
from mtoframe.bench.threads import limit_threads
from mtoframe.testing import make_tasks

from _shared import TASKS, conv_batch, conv_model, fmt, paired_ratio, step_times

def primed(name: str) -> tuple[mtoframe.Method, int]:
    """The method in its active phase, and the trainer epoch to run at."""
    if name == "dwa":
        m = mtoframe.create("dwa")
        m.load_state_dict({"epoch_means": [torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
                                           torch.tensor([0.9, 1.5, 3.1], dtype=torch.float64)]})
        return m, 2
    if name == "stch":
        m = mtoframe.create("stch")
        m.load_state_dict({"nadir": torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)})
        return m, 5
    if name == "gradnorm":
        return mtoframe.create("gradnorm", initial_losses="first_step"), 0
    return mtoframe.create(name), 0


def trainer_for(name: str, base: mtoframe.MultiTaskModel) -> mtoframe.Trainer:
    net = copy.deepcopy(base)
    stack, epoch = ([], 0) if name == "ew" else ([primed(name)[0]], primed(name)[1])
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    trainer = mtoframe.Trainer(net, make_tasks(TASKS), stack, optimizer=opt)
    trainer.epoch = epoch
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="famo,uw,dwa,gls,rlw,si,imtll,gradnorm,stch,excessmtl")
    args = ap.parse_args()
    limit_threads(args.threads)

    names = ["ew", *[n for n in args.methods.split(",") if n]]
    base = conv_model(args.channels)
    batch = conv_batch(args.batch, args.size)
    trainers = {n: trainer_for(n, base) for n in names}
    times = step_times({n: (lambda t=t: t.step(batch)) for n, t in trainers.items()}, rounds=args.rounds,
                       repeat=args.steps)
    goals = {"famo": 1.4, "gradnorm": None, "excessmtl": None}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"{args.size}x{args.size}, {args.channels} channels, {args.rounds} rounds x {args.steps} steps; "
          "ratios are medians of per-round ratios [95% bootstrap interval]")
    print(f"{'method':<10} {'ms/step':>8} {'ratio [95% CI]':>22}  goal")
    for n in names:
        r = paired_ratio(times, n, "ew")
        goal = goals.get(n, 1.05) if n != "ew" else None
        verdict = "" if goal is None else ("ok" if r.value <= goal else "MISSED") + f" (<= {goal})"
        print(f"{n:<10} {statistics.median(times[n]):8.2f} {fmt(r):>22}  {verdict}")

if __name__ == "__main__":
    main()
