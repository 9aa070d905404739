"""Batches of the Trainer: what a batch may look like, which tasks it labels, the task losses."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import checks
from .amp import MixedPrecision
from .errors import BatchError
from .model import MultiTaskModel, Task
from .modes import mode

#: ``(inputs, {task: target}, present tasks, per-task slices of the inputs or None)``
SplitBatch = tuple[Any, Mapping[str, Any], tuple[str, ...], "dict[str, slice] | None"]


def split_batch(batch: Any, task_names: Sequence[str]) -> SplitBatch:
    """``(inputs, targets, present tasks, per-task slices)`` of a batch.

    Single-input batches are ``(inputs, {task: target})``. Multi-input batches (Office: each
    task has its own images) are ``{task: (inputs, target)}``: the inputs are concatenated along
    the batch dimension so the encoder runs once, and each head reads its own slice of ``Z``.
    (BatchNorm therefore sees the union batch, unlike LibMTL's one encoder pass per task.)
    A missing or None target leaves that task out of this step (partial labels).
    """
    if isinstance(batch, Mapping):
        return _split_multi_input(batch, task_names)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Mapping)):
        raise BatchError("a batch must be a pair (inputs, {task_name: target}) or, multi-input, "
                         "{task_name: (inputs, target)}; got " + type(batch).__name__
                         + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    inputs, targets = batch
    return inputs, targets, _present(targets, task_names), None


def _split_multi_input(batch: Mapping[str, Any], task_names: Sequence[str]) -> SplitBatch:
    present = _present(batch, task_names)
    parts, targets, slices, start = [], {}, {}, 0
    for t in present:
        item = batch[t]
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Tensor)):
            raise BatchError(f"multi-input batch entry for task {t!r} must be a pair (inputs tensor, target)")
        parts.append(item[0])
        targets[t] = item[1]
        slices[t] = slice(start, start + item[0].shape[0])
        start += item[0].shape[0]
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise BatchError("multi-input batches need inputs of one shape per sample to share the encoder; "
                         f"got {sorted(shapes)}")
    return torch.cat(parts), targets, present, slices


def _present(targets: Mapping[str, Any], task_names: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(targets) - set(task_names))
    if unknown:
        raise BatchError(f"batch has targets for unknown task(s) {unknown}; the trainer's tasks are {list(task_names)}")
    present = tuple(t for t in task_names if targets.get(t) is not None)
    if not present:
        raise BatchError(f"batch has no target for any task; expected some of {list(task_names)}")
    return present


def head_outputs(heads: nn.ModuleDict | Mapping[str, Any], inputs: Mapping[str, Any],
                 slices: Mapping[str, slice] | None) -> dict[str, Any]:
    """Each present task's prediction from its own input (its slice of it for multi-input batches)."""
    if slices is None:
        return {t: heads[t](z) for t, z in inputs.items()}
    return {t: heads[t](z[slices[t]]) for t, z in inputs.items()}


def task_losses(tasks: Sequence[Task], preds: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, Tensor]:
    """``{task: scalar loss}`` for the tasks in ``preds``; a failing loss names its task."""
    by_name = {t.name: t for t in tasks}
    values = {}
    for name, pred in preds.items():
        checks.check_target(name, pred, targets[name])
        try:
            value = by_name[name].loss(pred, targets[name])
        except Exception as exc:
            raise BatchError(f"loss of task {name!r} failed on this batch ({type(exc).__name__}: {exc}); "
                             "check the target's shape and dtype against the head's prediction") from exc
        if not isinstance(value, Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise BatchError(f"loss of task {name!r} must be a scalar tensor, got {shape}")
        values[name] = value
    return values


def recompute(model: MultiTaskModel, tasks: Sequence[Task], amp: MixedPrecision,
              batch: SplitBatch) -> Callable[[bool], dict[str, Tensor]]:
    """``train_mode -> {task: loss}`` of ``batch`` under the model's current parameters (FAMO's
    extra forward after the step), with every module's mode restored afterwards."""
    inputs, targets, present, slices = batch

    def run(train_mode: bool) -> dict[str, Tensor]:
        with mode(model, train=train_mode), amp.autocast():
            z = model.encoder(inputs)
            return task_losses(tasks, head_outputs(model.heads, dict.fromkeys(present, z), slices), targets)
    return run
