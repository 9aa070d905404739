"""The multi-task model (hard parameter sharing) and task descriptions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from .errors import MtoError

LossFn = Callable[[Any, Any], Tensor]


class MultiTaskModel(nn.Module):
    """An ``encoder`` (input -> shared representation ``Z``) and one head per task (``Z`` -> prediction).

    Shared parameters are the encoder's; each head's parameters belong to its task alone.
    """

    def __init__(self, *, encoder: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise MtoError("MultiTaskModel needs at least one head")
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        enc = {id(p) for p in encoder.parameters()}
        for name, head in self.heads.items():
            shared = [n for n, p in head.named_parameters() if id(p) in enc]
            if shared:
                raise MtoError(f"head {name!r} shares parameters with the encoder ({shared[:3]}); heads must be task-specific")

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def head_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        heads = [self.heads[task]] if task is not None else list(self.heads.values())
        return [p for h in heads for p in h.parameters() if p.requires_grad]

    def forward(self, x: Any, tasks: Sequence[str] | None = None) -> dict[str, Any]:
        z = self.encoder(x)
        return {t: self.heads[t](z) for t in (tasks if tasks is not None else self.heads.keys())}


def check_task_name(value: Any) -> None:
    """Task names appear in log tags (``grad/cos/<a>-<b>``): non-empty, no ``/`` or ``-``."""
    if not isinstance(value, str) or not value or "/" in value or "-" in value:
        raise MtoError(f"task name must be a non-empty string without '/' or '-' (used in log tags), got {value!r}")


def _check_name(inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
    check_task_name(value)


def _check_loss(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise MtoError(f"task loss must be callable (prediction, target) -> scalar tensor, got {value!r}")


@attrs.define(frozen=True)
class Task:
    """A task: ``name`` (matches a head), ``loss(prediction, target) -> scalar`` and metrics.

    ``metrics`` are :class:`mtoframe.metrics.Metric` objects (each knows its direction).
    """

    name: str = attrs.field(validator=_check_name)
    loss: LossFn = attrs.field(validator=_check_loss, kw_only=True)
    metrics: tuple[Any, ...] = attrs.field(default=(), converter=tuple, kw_only=True)


def check_tasks(model: MultiTaskModel, tasks: Sequence[Task]) -> None:
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise MtoError(f"task names must be unique, got {names}")
    heads = list(model.heads.keys())
    if sorted(names) != sorted(heads):
        raise MtoError(
            f"task names {names} do not match the model's heads {heads}; every task needs exactly one head of the same name"
        )
