"""What the conformance checks share: their errors and a little introspection of the method
under test (used by :mod:`.conformance` and :mod:`.state_checks`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import torch
from torch import Tensor

from ..method import GRADIENT_ROLES, SPACES, Method

Factory = Callable[..., Method]


class ConformanceError(AssertionError):
    """A method broke a promise of the conformance suite."""


class NotApplicable(Exception):
    """The check does not apply to this method (e.g. ``aggregate`` for a loss weighting)."""


def fail(msg: str) -> NoReturn:
    raise ConformanceError(msg)


def is_gradient(m: Method) -> bool:
    return bool(m.roles & GRADIENT_ROLES)


def require_gradient(m: Method) -> None:
    if not is_gradient(m):
        raise NotApplicable(f"{m.name!r} is not a gradient method (roles {m.roles})")


def space_variants(factory: Factory) -> list[dict[str, Any]]:
    """Option overrides covering each gradient space the method offers."""
    m = factory()
    fields = {a.name: a for a in attrs.fields(type(m.options))}
    if "space" in fields:
        return [{"space": s} for s in SPACES]
    return [{}]


def params(trainer: Any) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
