"""What a saliency regulariser pays in PyTorch's double backward of a conv head (issue 17; not a test).

Rep-MTL's saliency ``S = ∂L/∂Z`` passes through each head's first convolution as its input
gradient, ``conv_transpose(g_out, W)``; the regulariser's gradient w.r.t. ``W`` then comes from
PyTorch's double-backward formula, which computes that weight gradient as a convolution of the
batch-transposed operands. The same numbers come from the convolution's own weight-gradient
kernel (``aten::convolution_backward`` with only the weight's output). Timed here on the scenes
heads' first conv (``Z`` 8×128×16×16, 3×3, 128 → 32 channels), interleaved rounds, one thread:

- ``autograd``: the double backward's ``W`` gradient as autograd runs it
  (``autograd.grad(⟨S, R⟩, W)`` with ``S`` built with ``create_graph=True``);
- ``transposed``: the batch-transposed convolution that formula runs;
- ``kernel``: the weight-gradient kernel on the same operands.

Printed: median ms per call and the median over rounds of the per-round ratio [95% bootstrap
interval]; also that ``autograd`` and ``kernel`` give the same ``W`` gradient.

    python benchmarks/conv_double_backward.py [--rounds 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from _shared import fmt, paired_ratio, step_times

from mtoframe.bench.threads import limit_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    limit_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 128, 16, 16, generator=g, requires_grad=True)
    w = torch.randn(32, 128, 3, 3, generator=g, requires_grad=True)
    g_out = torch.randn(8, 32, 16, 16, generator=g)  # the head's output gradient
    r = torch.randn(8, 128, 16, 16, generator=g)  # the regulariser's gradient w.r.t. S

    def autograd_w() -> torch.Tensor:
        (s,) = torch.autograd.grad(F.conv2d(z, w, padding=1), z, g_out, create_graph=True)
        (gw,) = torch.autograd.grad(s, w, r)
        return gw

    def saliency_only() -> torch.Tensor:  # subtracted: the forward and S itself
        (s,) = torch.autograd.grad(F.conv2d(z, w, padding=1), z, g_out, create_graph=True)
        return s

    def transposed() -> torch.Tensor:  # what the formula runs: W's gradient with batch and channels swapped
        return F.conv2d(r.transpose(0, 1), g_out.transpose(0, 1), padding=1).transpose(0, 1)

    def kernel() -> torch.Tensor:
        return torch.ops.aten.convolution_backward(g_out, r, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                   [False, True, False])[1]

    torch.testing.assert_close(kernel(), autograd_w(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(transposed(), kernel(), rtol=1e-4, atol=1e-3)
    times = step_times({"autograd": autograd_w, "saliency": saliency_only, "transposed": transposed,
                        "kernel": kernel}, rounds=args.rounds, repeat=3, warmup=2)
    times["autograd - saliency"] = [a - s for a, s in zip(times["autograd"], times["saliency"], strict=True)]
    print(f"{args.threads} thread(s), {args.rounds} interleaved rounds of 3 calls; W's gradient equal to 1e-4")
    print(f"{'call':<20} {'ms':>7} {'vs kernel':>22}")
    for name in ("autograd - saliency", "transposed", "kernel"):
        print(f"{name:<20} {statistics.median(times[name]):7.2f} {fmt(paired_ratio(times, name, 'kernel')):>22}")


if __name__ == "__main__":
    main()
