"""mtoframe-cagrad: the CAGrad gradient aggregator as an mtoframe plugin."""

from __future__ import annotations

from mtoframe import Registry, hookimpl

from .cagrad import CAGrad, CAGradOptions, gram_factor

MTOFRAME_HOOK_API = ">=1,<2"

__all__ = ["CAGrad", "CAGradOptions", "gram_factor"]


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    registry.add(CAGrad)
