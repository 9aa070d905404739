"""Rep-MTL step time relative to EW and to Nash-MTL, measured side by side (issue 5).

Model: the core's encoder-dominant HPS conv net (``mtoframe.models.hps.build_scene_model``, three
dense tasks: segmentation, depth, normals) on a fixed batch of generated ``scenes`` images. One
trainer per stack on identical copies; interleaved rounds (every round times every contender in
turn, so drift and noise from other processes hit all alike); the median of per-round means.

Contenders: ``ew`` (one backward), ``repmtl`` (saliency with ``create_graph``, TSR + CSA, one
backward of the second-order objective), ``nashmtl`` (if installed: T per-task encoder
backwards + a convex solve), and ``repmtl+nashmtl`` (the stack; it reuses the saliency for the
per-task encoder gradients).

Goals: ``repmtl`` ≤ 1.3× EW and ≤ 0.5× Nash-MTL (the paper reports about 0.74× Nash-MTL).

    python benchmarks/repmtl_step.py [--rounds 7] [--steps 3] [--batch 8] [--size 64] [--width 32]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import copy

from collections.abc import Callable

import torch

import mtoframe
from mtoframe.data.scenes import NUM_CLASSES, generate_scenes
from mtoframe.models.hps import build_scene_model, scene_tasks

from _shared import median_step_ms

def make_batch(n: int, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    d = {k: torch.from_numpy(v) for k, v in generate_scenes(n, size=size, seed=0).items()}
    return d["image"], {"segmentation": d["label"], "depth": d["depth"], "normal": d["normal"]}

def trainer_step(stack: list[str], net: mtoframe.MultiTaskModel) -> Callable[[tuple], object]:
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    trainer = mtoframe.Trainer(net, scene_tasks(NUM_CLASSES), [mtoframe.create(n) for n in stack], optimizer=opt)
    return trainer.step

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    base = build_scene_model(num_classes=NUM_CLASSES, width=args.width)
    batch = make_batch(args.batch, args.size)
    stacks = {"ew": [], "repmtl": ["repmtl"]}
    if "nashmtl" in mtoframe.available():
        stacks["nashmtl"] = ["nashmtl"]
        stacks["repmtl+nashmtl"] = ["repmtl", "nashmtl"]
    steps = {name: trainer_step(stack, copy.deepcopy(base)) for name, stack in stacks.items()}
    # each timed call runs `steps` steps so that sub-millisecond jitter averages out
    med = median_step_ms({n: (lambda s=s: [s(batch) for _ in range(args.steps)]) for n, s in steps.items()},
                         rounds=args.rounds, warmup=1)
    med = {n: v / args.steps for n, v in med.items()}

    z = base.encoder(batch[0][:1])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); scene model width {args.width}, "
          f"batch {args.batch} x 3x{args.size}x{args.size}, Z {tuple(z.shape[1:])}, T=3; "
          f"{args.rounds} rounds x {args.steps} steps, median of round means")
    print(f"{'stack':<16} {'ms/step':>9} {'vs EW':>7} {'vs Nash-MTL':>12}")
    for n, ms in med.items():
        vs_nash = f"{ms / med['nashmtl']:12.3f}" if "nashmtl" in med else f"{'-':>12}"
        print(f"{n:<16} {ms:9.1f} {ms / med['ew']:7.3f} {vs_nash}")
    r_ew = med["repmtl"] / med["ew"]
    line = f"repmtl: {r_ew:.3f}x EW (goal <= 1.3: {'ok' if r_ew <= 1.3 else 'MISSED'})"
    if "nashmtl" in med:
        r_nash = med["repmtl"] / med["nashmtl"]
        line += f", {r_nash:.3f}x Nash-MTL (goal <= 0.5: {'ok' if r_nash <= 0.5 else 'MISSED'})"
    print(line)

if __name__ == "__main__":
    main()
