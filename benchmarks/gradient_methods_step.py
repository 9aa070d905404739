"""Step time of each installed gradient method relative to EW and to a hand-written loop that
computes the same per-task gradients (issue 3), measured side by side; plus per-call
aggregation time on bare 3×1,000,000 and 10×100,000 matrices.

Step timing: a small encoder-dominant conv model (four 3×3 conv layers in the encoder, 1×1-conv
heads), one trainer per method on identical copies, interleaved rounds (every round times every
contender in turn, so drift and noise hit all alike); ratios are medians of per-round ratios. Baselines:

* ``ew``: the trainer with no method (one backward);
* ``loop-params``: a hand-written PyTorch step that computes the T per-task shared-parameter
  gradients with ``autograd.grad`` into a T×P buffer, sums them, back-propagates the heads and
  steps: the work any parameter-space gradient method must do;
* ``loop-rep``: the same with per-task gradients w.r.t. the representation, summed and pushed
  through the encoder in one backward (the floor for representation-space methods).

Goal: every gradient method's step within 10% of its loop (ratio ≤ 1.10).

    python benchmarks/gradient_methods_step.py [--rounds 7] [--steps 5] [--threads 1]
        [--methods mgda,pcgrad,...] [--no-aggregate]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

import mtoframe
from mtoframe.bench.threads import limit_threads
from mtoframe.method import GRADIENT_ROLES
from mtoframe.registry import get_registry
from mtoframe.testing import make_tasks

from _shared import TASKS, conv_batch, conv_model, fmt, paired_ratio, step_times

def gradient_methods() -> list[str]:
    reg = get_registry()
    return [n for n in reg.names() if reg.get(n).cls.roles & GRADIENT_ROLES]

def hand_loop(net: mtoframe.MultiTaskModel, space: str) -> Callable[[tuple], None]:
    """A plain PyTorch step computing the same per-task gradients as the engine, then their sum."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    shared = net.shared_parameters()
    heads = net.head_parameters()
    sizes = [p.numel() for p in shared]
    buf = torch.empty(len(TASKS), sum(sizes))

    def step(batch: tuple) -> None:
        x, y = batch
        opt.zero_grad(set_to_none=True)
        z = net.encoder(x)
        # separate scalars, not a stacked vector: the gradient of one element of a stack would
        # run every head's backward (the others with zeros)
        losses = [((net.heads[t](z) - y[t]) ** 2).mean() for t in TASKS]
        if space == "params":
            for t in range(len(TASKS)):
                grads = torch.autograd.grad(losses[t], shared, retain_graph=True)
                torch.cat([g.reshape(-1) for g in grads], out=buf[t])
            for p, chunk in zip(shared, torch.split(buf.sum(0), sizes)):
                p.grad = chunk.view_as(p).clone()
        else:
            rows = [torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in range(len(TASKS))]
            torch.autograd.backward(z, torch.stack(rows).sum(0), retain_graph=True)
        torch.autograd.backward(sum(losses), inputs=heads)
        opt.step()

    return step

def trainer_step(name: str, net: mtoframe.MultiTaskModel) -> tuple[Callable[[tuple], None], str | None]:
    stack = [] if name == "ew" else [mtoframe.create(name)]
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    trainer = mtoframe.Trainer(net, make_tasks(TASKS), stack, optimizer=opt)
    return trainer.step, trainer.grad_space

def time_steps(args: argparse.Namespace, names: list[str]) -> None:
    base = conv_model(args.channels)
    batch = conv_batch(args.batch, args.size)
    steps: dict[str, Callable[[tuple], None]] = {}
    spaces: dict[str, str | None] = {}
    for n in ["ew", *names]:
        steps[n], spaces[n] = trainer_step(n, copy.deepcopy(base))
    steps["loop-params"] = hand_loop(copy.deepcopy(base), "params")
    steps["loop-rep"] = hand_loop(copy.deepcopy(base), "representation")
    times = step_times({n: (lambda s=s: s(batch)) for n, s in steps.items()}, rounds=args.rounds, repeat=args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"{args.size}x{args.size}, {args.channels} channels, T={len(TASKS)}, "
          f"{args.rounds} rounds x {args.steps} steps; ratios are medians of per-round ratios [95% bootstrap interval]")
    print(f"{'method':<18} {'space':<15} {'ms/step':>8} {'vs EW':>22} {'vs loop':>22}  goal (vs loop <= 1.10)")
    for n in ["ew", "loop-params", "loop-rep"]:
        print(f"{n:<18} {'':<15} {statistics.median(times[n]):8.2f} {fmt(paired_ratio(times, n, 'ew')):>22}")
    for n in names:
        loop = "loop-rep" if spaces[n] == "representation" else "loop-params"
        r = paired_ratio(times, n, loop)
        print(f"{n:<18} {str(spaces[n]):<15} {statistics.median(times[n]):8.2f} "
              f"{fmt(paired_ratio(times, n, 'ew')):>22} {fmt(r):>22}  " + ("ok" if r.value <= 1.10 else "MISSED"))

def time_aggregation(args: argparse.Namespace, names: list[str]) -> None:
    print("\nper-call aggregation time (mtoframe.aggregate on a bare float32 matrix, median of "
          f"{args.calls} calls after 2 warm-up calls)")
    shapes = [(3, 1_000_000), (10, 100_000)]
    print(f"{'method':<18}" + "".join(f"{f'{T}x{P:,}':>16}" for T, P in shapes))
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(T, P, generator=g) for T, P in shapes]
    losses = [torch.rand(T, generator=g) + 0.1 for T, _ in shapes]
    for n in ["sum", *names]:
        row = []
        for G, L in zip(mats, losses):
            m = None if n == "sum" else mtoframe.create(n)
            fn = (lambda: G.sum(0)) if m is None else (lambda: mtoframe.aggregate(m, G, L))
            for _ in range(2):
                fn()
            ts = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            row.append(f"{statistics.median(ts):13.2f} ms")
        print(f"{n:<18}" + "".join(f"{c:>16}" for c in row))

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=9)
    ap.add_argument("--methods", default="", help="comma-separated; default: every installed gradient method")
    ap.add_argument("--no-aggregate", action="store_true", help="skip the bare-matrix aggregation timings")
    args = ap.parse_args()
    limit_threads(args.threads)
    names = [n for n in args.methods.split(",") if n] or gradient_methods()
    time_steps(args, names)
    if not args.no_aggregate:
        time_aggregation(args, names)

if __name__ == "__main__":
    main()
