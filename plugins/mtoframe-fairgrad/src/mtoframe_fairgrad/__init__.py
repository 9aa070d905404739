"""mtoframe-fairgrad: the FairGrad gradient aggregator as an mtoframe plugin."""

from __future__ import annotations

from mtoframe import Registry, hookimpl

from .fairgrad import FairGrad, FairGradOptions, solve_fair_weights

MTOFRAME_HOOK_API = ">=1,<2"

__all__ = ["FairGrad", "FairGradOptions", "solve_fair_weights"]


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    registry.add(FairGrad)
