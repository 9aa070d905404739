"""mtoframe gradient methods: MGDA (+MGDA-UB), PCGrad, IMTL-G, GradVac, Aligned-MTL, UPGrad,
GradDrop. One module per method; the maths and the reference each option reproduces are in
each module's docstring."""

from __future__ import annotations

from mtoframe import hookimpl
from mtoframe.registry import Registry

from .alignedmtl import AlignedMTL
from .graddrop import GradDrop
from .gradvac import GradVac
from .imtlg import IMTLG
from .mgda import MGDA
from .pcgrad import PCGrad
from .upgrad import UPGrad

MTOFRAME_HOOK_API = ">=1,<2"

METHODS = (MGDA, PCGrad, IMTLG, GradVac, AlignedMTL, UPGrad, GradDrop)

__all__ = ["IMTLG", "METHODS", "MGDA", "MTOFRAME_HOOK_API", "AlignedMTL", "GradDrop", "GradVac", "PCGrad", "UPGrad"]


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    for cls in METHODS:
        registry.add(cls)
