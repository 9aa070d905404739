"""mtoframe-nashmtl: the Nash-MTL gradient aggregator as an mtoframe plugin."""

from __future__ import annotations

from mtoframe import Registry, hookimpl

from .nashmtl import NashMTL, NashMTLOptions

MTOFRAME_HOOK_API = ">=1,<2"

__all__ = ["NashMTL", "NashMTLOptions"]


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    registry.add(NashMTL)
