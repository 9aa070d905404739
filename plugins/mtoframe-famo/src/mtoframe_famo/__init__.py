"""mtoframe-famo: the FAMO loss-weighting method as an mtoframe plugin."""

from __future__ import annotations

from mtoframe import Registry, hookimpl

from .famo import FAMO, FAMOOptions, softmax_vjp

MTOFRAME_HOOK_API = ">=1,<2"

__all__ = ["FAMO", "FAMOOptions", "softmax_vjp"]


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    registry.add(FAMO)
