"""Rep-MTL for mtoframe: representation-level task saliency regularisers.

``tsr_loss`` and ``csa_loss`` are pure functions of a ``[B, T, C, H, W]`` (or ``[B, T, C]``)
saliency tensor (``csa_and_tsr``: both, reading the saliency once); :class:`RepMTL` (method
``repmtl``) adds them to the training objective.
"""

from __future__ import annotations

from mtoframe import hookimpl
from mtoframe.registry import Registry

from .csa import csa_and_tsr, csa_loss, csa_terms
from .repmtl import RepMTL, RepMTLOptions
from .tsr import tsr_loss, tsr_terms

MTOFRAME_HOOK_API = ">=1,<2"

__all__ = ["RepMTL", "RepMTLOptions", "csa_and_tsr", "csa_loss", "csa_terms", "tsr_loss", "tsr_terms"]


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    registry.add(RepMTL)
