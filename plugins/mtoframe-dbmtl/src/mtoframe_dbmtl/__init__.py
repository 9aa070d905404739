"""mtoframe DB-MTL plugin (method ``dbmtl``)."""

from __future__ import annotations

from mtoframe import hookimpl
from mtoframe.registry import Registry

from .dbmtl import DBMTL

MTOFRAME_HOOK_API = ">=1,<2"

__all__ = ["DBMTL", "MTOFRAME_HOOK_API"]


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    registry.add(DBMTL)
