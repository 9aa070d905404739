"""Rep-MTL step time relative to EW and to Nash-MTL, measured side by side (issue 5).

Model: the core's encoder-dominant HPS conv net (``mtoframe.models.hps.build_scene_model``, three
dense tasks: segmentation, depth, normals) on a fixed batch of generated ``scenes`` images. One
trainer per stack on identical copies; interleaved rounds (every round times every contender in
turn, so drift and noise from other processes hit all alike); ratios are the median of per-round
ratios. The last line also prints the arithmetic floor of each ratio (multiply-adds only, see
:func:`arithmetic_floor`).

Contenders: ``ew`` (one backward), ``repmtl`` (saliency with ``create_graph``, TSR + CSA, one
backward of the second-order objective), ``nashmtl`` (if installed: T per-task encoder
backwards + a convex solve), and ``repmtl+nashmtl`` (the stack; it reuses the saliency for the
per-task encoder gradients).

Goals: ``repmtl`` ≤ 1.3× EW and ≤ 0.5× Nash-MTL (the paper reports about 0.74× Nash-MTL).

    python benchmarks/repmtl_step.py [--rounds 9] [--steps 3] [--batch 8] [--size 64] [--width 32]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics

from collections.abc import Callable

import torch

import mtoframe
from mtoframe.bench.threads import limit_threads
from mtoframe.data.scenes import NUM_CLASSES, generate_scenes
from mtoframe.models.hps import build_scene_model, count_macs, scene_tasks

from _shared import fmt, paired_ratio, step_times

def make_batch(n: int, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    d = {k: torch.from_numpy(v) for k, v in generate_scenes(n, size=size, seed=0).items()}
    return d["image"], {"segmentation": d["label"], "depth": d["depth"], "normal": d["normal"]}

def trainer_step(stack: list[str], net: mtoframe.MultiTaskModel) -> Callable[[tuple], object]:
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    trainer = mtoframe.Trainer(net, scene_tasks(NUM_CLASSES), [mtoframe.create(n) for n in stack], optimizer=opt)
    return trainer.step

def arithmetic_floor(macs: dict[str, int], tasks: int) -> tuple[float, float]:
    """Lower bounds of Rep-MTL's step time relative to EW and to Nash-MTL from conv/linear
    multiply-adds alone (``E`` encoder, ``H`` all heads; a backward pass costs twice its forward:
    input and weight gradients).

    EW: forward ``E + H``, backward ``2E + 2H``. Rep-MTL adds the saliency (the heads' input
    gradients, ``H``) and its double backward (the gradient's gradient w.r.t. the heads' inputs and
    weights, ``2H``): ``3E + 6H``, before any work for TSR/CSA. Nash-MTL: forward, the heads'
    input gradients once, their weight gradients once, and ``T`` encoder backwards:
    ``(1 + 2T)E + 3H``, before the solve.
    """
    E = macs["encoder"]
    H = sum(v for k, v in macs.items() if k.startswith("head/"))
    rep, ew, nash = 3 * E + 6 * H, 3 * E + 3 * H, (1 + 2 * tasks) * E + 3 * H
    return rep / ew, rep / nash


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    limit_threads(args.threads)

    torch.manual_seed(0)
    base = build_scene_model(num_classes=NUM_CLASSES, width=args.width)
    batch = make_batch(args.batch, args.size)
    stacks = {"ew": [], "repmtl": ["repmtl"]}
    if "nashmtl" in mtoframe.available():
        stacks["nashmtl"] = ["nashmtl"]
        stacks["repmtl+nashmtl"] = ["repmtl", "nashmtl"]
    steps = {name: trainer_step(stack, copy.deepcopy(base)) for name, stack in stacks.items()}
    times = step_times({n: (lambda s=s: s(batch)) for n, s in steps.items()}, rounds=args.rounds, repeat=args.steps)

    z = base.encoder(batch[0][:1])
    macs = count_macs(base, batch[0][:1])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); scene model width {args.width}, "
          f"batch {args.batch} x 3x{args.size}x{args.size}, Z {tuple(z.shape[1:])}, T=3; heads "
          f"{sum(v for k, v in macs.items() if k.startswith('head/')) / macs['encoder']:.1%} of the encoder's "
          f"multiply-adds; {args.rounds} rounds x {args.steps} steps; ratios are medians of per-round ratios "
          "[95% bootstrap interval]")
    print(f"{'stack':<16} {'ms/step':>9} {'vs EW':>22} {'vs Nash-MTL':>22}")
    for n, ts in times.items():
        vs_nash = f"{fmt(paired_ratio(times, n, 'nashmtl')):>22}" if "nashmtl" in times else f"{'-':>22}"
        print(f"{n:<16} {statistics.median(ts):9.1f} {fmt(paired_ratio(times, n, 'ew')):>22} {vs_nash}")
    floor_ew, floor_nash = arithmetic_floor(macs, tasks=3)
    r_ew = paired_ratio(times, "repmtl", "ew")
    line = (f"repmtl: {fmt(r_ew)}x EW (goal <= 1.3: {'ok' if r_ew.value <= 1.3 else 'MISSED'}; "
            f"arithmetic floor {floor_ew:.3f})")
    if "nashmtl" in times:
        r_nash = paired_ratio(times, "repmtl", "nashmtl")
        line += (f", {fmt(r_nash)}x Nash-MTL (goal <= 0.5: {'ok' if r_nash.value <= 0.5 else 'MISSED'}; "
                 f"arithmetic floor {floor_nash:.3f})")
    print(line)

if __name__ == "__main__":
    main()
