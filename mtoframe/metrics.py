"""Evaluation metrics (each knows whether higher or lower is better) and the two summary
numbers of METHODS.md: ``Δp_task`` (higher is better) and ``Δm%`` (lower is better)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from .errors import MtoError

Direction = Literal["higher", "lower"]


@runtime_checkable
class Metric(Protocol):
    """Accumulates over batches; ``compute`` returns ``{metric_name: value}``."""

    directions: dict[str, Direction]

    def reset(self) -> None: ...
    def update(self, pred: Tensor, target: Tensor) -> None: ...
    def compute(self) -> dict[str, float]: ...


class _Sums:
    def __init__(self, names: Sequence[str]) -> None:
        self._names = list(names)
        self.reset()

    def reset(self) -> None:
        self.sums = {n: 0.0 for n in self._names}
        self.count = 0.0


class Accuracy(_Sums):
    """Top-1 accuracy of class logits ``[B, K]`` (or ``[B, K, ...]``) against integer labels."""

    def __init__(self, name: str = "acc", *, ignore_index: int | None = None) -> None:
        self.name, self.ignore_index = name, ignore_index
        self.directions = {name: "higher"}
        super().__init__([name])

    def update(self, pred: Tensor, target: Tensor) -> None:
        hit = pred.argmax(1) == target
        valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(hit)
        self.sums[self.name] += (hit & valid).sum().item()
        self.count += valid.sum().item()

    def compute(self) -> dict[str, float]:
        return {self.name: self.sums[self.name] / max(self.count, 1.0)}


class MeanError(_Sums):
    """Mean absolute (``"mae"``) or squared (``"mse"``) error over all entries."""

    def __init__(self, kind: Literal["mae", "mse"] = "mae", name: str | None = None) -> None:
        if kind not in ("mae", "mse"):
            raise MtoError(f"MeanError kind must be 'mae' or 'mse', got {kind!r}")
        self.kind, self.name = kind, name or kind
        self.directions = {self.name: "lower"}
        super().__init__([self.name])

    def update(self, pred: Tensor, target: Tensor) -> None:
        d = (pred - target).abs() if self.kind == "mae" else (pred - target) ** 2
        self.sums[self.name] += d.sum().item()
        self.count += d.numel()

    def compute(self) -> dict[str, float]:
        return {self.name: self.sums[self.name] / max(self.count, 1.0)}


class Segmentation:
    """mIoU and pixel accuracy from a confusion matrix; pixels labelled ``ignore_index`` are
    left out. Classes absent from both prediction and target in the whole split are left out of
    the mean (as LibMTL and the MTAN code)."""

    def __init__(self, num_classes: int, *, ignore_index: int = -1) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.directions = {"miou": "higher", "pixacc": "higher"}
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        label = pred.argmax(1) if pred.dim() == target.dim() + 1 else pred
        valid = target != self.ignore_index
        t, p = target[valid].long(), label[valid].long()
        k = self.num_classes
        self.confusion += torch.bincount(t * k + p, minlength=k * k).reshape(k, k).cpu()

    def compute(self) -> dict[str, float]:
        c = self.confusion.double()
        inter = c.diag()
        union = c.sum(0) + c.sum(1) - inter
        seen = union > 0
        miou = (inter[seen] / union[seen]).mean().item() if seen.any() else 0.0
        return {"miou": miou, "pixacc": (inter.sum() / c.sum().clamp_min(1)).item()}


class Depth(_Sums):
    """Absolute and relative depth error on valid pixels (target > 0; 0 marks no depth)."""

    def __init__(self) -> None:
        self.directions = {"abs_err": "lower", "rel_err": "lower"}
        super().__init__(["abs_err", "rel_err"])

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target > 0
        p, t = pred[valid], target[valid]
        err = (p - t).abs()
        self.sums["abs_err"] += err.sum().item()
        self.sums["rel_err"] += (err / t).sum().item()
        self.count += valid.sum().item()

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1.0)
        return {k: v / n for k, v in self.sums.items()}


class Normals:
    """Angle between predicted and true surface normals (``[B, 3, H, W]``) on valid pixels (true
    normal non-zero): mean and median in degrees, and the share within 11.25°, 22.5° and 30°."""

    THRESHOLDS = (11.25, 22.5, 30.0)

    def __init__(self) -> None:
        self.directions: dict[str, Direction] = {"mean": "lower", "median": "lower"}
        self.directions.update({f"within_{t:g}": "higher" for t in self.THRESHOLDS})
        self.reset()

    def reset(self) -> None:
        self.angles: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target.norm(dim=1) > 0
        p = torch.nn.functional.normalize(pred, dim=1)
        t = torch.nn.functional.normalize(target, dim=1)
        cos = (p * t).sum(1).clamp(-1.0, 1.0)
        self.angles.append(torch.rad2deg(torch.acos(cos[valid])).detach().double().cpu())

    def compute(self) -> dict[str, float]:
        a = torch.cat(self.angles) if self.angles else torch.zeros(0, dtype=torch.float64)
        if a.numel() == 0:
            return {k: math.nan for k in self.directions}
        out = {"mean": a.mean().item(), "median": a.median().item()}
        out.update({f"within_{t:g}": (a < t).double().mean().item() for t in self.THRESHOLDS})
        return out


def _rel(results: Mapping[str, Mapping[str, float]], baselines: Mapping[str, Mapping[str, float]],
         directions: Mapping[str, Mapping[str, Direction]]) -> dict[str, list[float]]:
    """Per task, the signed relative improvement over the baseline of each metric (positive =
    better)."""
    out: dict[str, list[float]] = {}
    for task, metrics in results.items():
        if task not in baselines:
            raise MtoError(f"no single-task baseline for task {task!r}; baselines cover {sorted(baselines)}")
        rel = []
        for name, m in metrics.items():
            if name not in baselines[task]:
                raise MtoError(f"baseline of task {task!r} lacks metric {name!r}; it has {sorted(baselines[task])}")
            b = baselines[task][name]
            if b == 0:
                raise MtoError(f"baseline {task}/{name} is 0: relative change is undefined")
            sign = -1.0 if directions[task][name] == "lower" else 1.0
            rel.append(sign * (m - b) / b)
        out[task] = rel
    return out


def delta_p_task(results: Mapping[str, Mapping[str, float]], baselines: Mapping[str, Mapping[str, float]],
                 directions: Mapping[str, Mapping[str, Direction]]) -> float:
    """``Δp_task = 100/T Σ_t (1/n_t) Σ_k (−1)^σ (M − B)/B`` in percent; higher is better
    (LibMTL, DB-MTL, Rep-MTL). Each task counts equally whatever its number of metrics."""
    rel = _rel(results, baselines, directions)
    return 100.0 * sum(sum(r) / len(r) for r in rel.values()) / len(rel)


def delta_m(results: Mapping[str, Mapping[str, float]], baselines: Mapping[str, Mapping[str, float]],
            directions: Mapping[str, Mapping[str, Direction]]) -> float:
    """``Δm% = 100/K Σ_k (−1)^(1−σ) (M − B)/B`` over all K metrics pooled; lower is better
    (CAGrad, Nash-MTL, FAMO)."""
    pooled = [x for r in _rel(results, baselines, directions).values() for x in r]
    return -100.0 * sum(pooled) / len(pooled)


def task_directions(tasks: Sequence[Any]) -> dict[str, dict[str, Direction]]:
    return {t.name: {k: d for m in t.metrics for k, d in m.directions.items()} for t in tasks}


def summarise(results: Mapping[str, Mapping[str, float]], baselines: Mapping[str, Mapping[str, float]],
              tasks: Sequence[Any]) -> dict[str, float]:
    d = task_directions(tasks)
    return {"delta_p_task": delta_p_task(results, baselines, d), "delta_m": delta_m(results, baselines, d)}
