"""Overhead of mtoframe's step over a hand-written PyTorch loop, for EW (goal: ratio <= 1.03).

Both train their own copy of the same encoder-dominant scene model (mtoframe.models.hps) with
Adam on the same batch; rounds are interleaved in shuffled order and the median of the per-round
ratios, on wall and on CPU time, is printed with its 95% bootstrap interval (mtoframe.bench.stats). The hand loop is what a user would write without mtoframe:
forward, sum of the task losses, one backward, optimizer step.

    python benchmarks/core_overhead.py [--size 64 --batch 16 --width 32 --rounds 60 --threads 1]
"""

from __future__ import annotations

import argparse

import torch

from mtoframe import Trainer
from mtoframe.bench.stats import paired_ratio_ci, summarise_times
from mtoframe.bench.threads import limit_threads
from mtoframe.bench.timing import Contender, run_interleaved
from mtoframe.bench.workloads import scenes_workload


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        limit_threads(args.threads)
    device = torch.device(args.device)
    w = scenes_workload(size=args.size, batch=args.batch, width=args.width).to(device)
    inputs, targets = w.batch

    hand_model = w.fresh_model()
    hand_opt = torch.optim.Adam(hand_model.parameters(), lr=1e-4)
    tasks = w.tasks

    def hand_step() -> None:
        hand_model.train()
        hand_opt.zero_grad(set_to_none=True)
        z = hand_model.encoder(inputs)
        loss = sum(t.loss(hand_model.heads[t.name](z), targets[t.name]) for t in tasks)
        loss.backward()
        hand_opt.step()

    model = w.fresh_model()
    trainer = Trainer(model, tasks, [], optimizer=torch.optim.Adam(model.parameters(), lr=1e-4), progress=False)
    contenders = [Contender("hand", hand_step), Contender("mtoframe", lambda: trainer.step(w.batch))]
    times = run_interleaved(contenders, rounds=args.rounds, warmup=args.warmup, device=device)
    for k, v in times.wall.items():
        s = summarise_times(v)
        print(f"{k:9s} median {s['median_ms']:8.2f} ms  IQR {s['iqr_ms']:6.2f} ms")
    for clock, ts in (("wall", times.wall), ("CPU", times.cpu)):
        r = paired_ratio_ci(ts["mtoframe"], ts["hand"])
        print(f"ratio mtoframe / hand ({clock} time, median of per-round ratios): {r.value:.3f} "
              f"[{r.low:.3f}, {r.high:.3f}] (95% bootstrap interval); goal <= 1.03 -> "
              + ("met" if r.value <= 1.03 else "NOT met"))
    print(f"({args.size}x{args.size}, batch {args.batch}, width {args.width}, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads, {device})")


if __name__ == "__main__":
    main()
