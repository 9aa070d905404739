"""The scene model's earlier loss, normalisation and up-sampling forms against the current ones, paired
(issue 17; not a test).

Three changes to ``mtoframe.models.hps`` kept the values (up to rounding) and changed the form:
`e3fe333` made the depth and normal losses select valid pixels with ``torch.where`` instead of
boolean indexing (``losses``) and the normal head normalise with ``unit_vectors``
(``x · rsqrt(max(Σx², ε²))``) instead of ``F.normalize`` (``normalise``); a later change made the
heads up-sample with ``upsample_bilinear`` (two products with interpolation matrices) instead of
``F.interpolate`` (``upsample``). This script keeps the old forms and times EW and Rep-MTL trainers
on the scenes Show's model and batch
(width 32, batch 8 of 64×64, one thread) with the old and the current form of one change side by
side in interleaved rounds. Printed: each new / old step-time ratio (median of per-round ratios,
95% bootstrap interval, CPU time) for EW and for Rep-MTL, and Rep-MTL / EW under each form.

    python benchmarks/scene_model_forms.py [--change losses|normalise|upsample] [--rounds 25]
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F
from _shared import fmt
from torch import Tensor

from mtoframe import MultiTaskModel, Trainer, create
from mtoframe.bench.speed import adam
from mtoframe.bench.stats import paired_ratio_ci
from mtoframe.bench.threads import limit_threads
from mtoframe.bench.timing import Contender, run_interleaved
from mtoframe.bench.workloads import scenes_workload
from mtoframe.models._functional import unit_vectors, upsample_bilinear
from mtoframe.models.hps import SceneHead


def old_depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    valid = target > 0
    return (pred - target).abs()[valid].sum() / valid.sum().clamp_min(1)


def old_normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    valid = (target != 0).any(1)
    cos = (pred * target).sum(1)
    return 1.0 - cos[valid].sum() / valid.sum().clamp_min(1)


def _head_forward_with(*, upsample: str, normalise: str) -> Callable[[SceneHead, Tensor], Tensor]:
    def forward(self: SceneHead, z: Tensor) -> Tensor:
        x = self.net(z)
        out = (F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False) if upsample == "old"
               else upsample_bilinear(x, self.scale, align_corners=False))
        if not self.normalize:
            return out
        return F.normalize(out, dim=1) if normalise == "old" else unit_vectors(out, dim=1)

    return forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--change", choices=("losses", "normalise", "upsample"), default="losses")
    ap.add_argument("--rounds", type=int, default=25)
    args = ap.parse_args()
    limit_threads(1)
    w = scenes_workload(size=64, batch=8, width=32)
    old_losses = {"depth": old_depth_loss, "normal": old_normal_loss}

    def trainer(method: str, old: bool) -> Trainer:
        model: MultiTaskModel = w.fresh_model()
        tasks = list(w.tasks)
        if old and args.change == "losses":
            tasks = [attrs.evolve(t, loss=old_losses.get(t.name, t.loss)) for t in tasks]
        if old and args.change in ("normalise", "upsample"):
            # only the changed form is the old one: the other is the current one on both sides
            forward = _head_forward_with(upsample="old" if args.change == "upsample" else "new",
                                         normalise="old" if args.change == "normalise" else "new")
            for head in model.heads.values():
                head.forward = types.MethodType(forward, head)  # type: ignore[method-assign]
        return Trainer(model, tasks, [create(method)], optimizer=adam(model.parameters(), 1e-4), progress=False)

    steps: dict[str, Callable[[], object]] = {}
    for method in ("ew", "repmtl"):
        for old in (False, True):
            tr = trainer(method, old)
            steps[f"{method}{'-old' if old else ''}"] = lambda tr=tr: tr.step(w.batch)
    times = run_interleaved([Contender(n, s) for n, s in steps.items()], rounds=args.rounds, warmup=2).cpu

    def ratio(a: str, b: str) -> str:
        return fmt(paired_ratio_ci(times[a], times[b]))

    print(f"scenes Show model, change: {args.change}, {args.rounds} interleaved rounds, CPU time, one thread")
    print(f"new / old:  ew {ratio('ew', 'ew-old')}   repmtl {ratio('repmtl', 'repmtl-old')}")
    print(f"repmtl / ew:  new {ratio('repmtl', 'ew')}   old {ratio('repmtl-old', 'ew-old')}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
