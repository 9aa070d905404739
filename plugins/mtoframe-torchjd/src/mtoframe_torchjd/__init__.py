"""mtoframe-torchjd: TorchJD's aggregators as mtoframe methods ``torchjd.<name>``.

Proof that a third-party method library plugs in through the ordinary entry point: TorchJD is a
dependency of this distribution only. See :mod:`mtoframe_torchjd.aggregators` for the list and
:mod:`mtoframe_torchjd.adapter` for what each method does in the step.
"""

from __future__ import annotations

import mtoframe

from .adapter import TorchJDMethod
from .aggregators import IMTLG, METHODS, MGDA, AlignedMTL, ConFIG, DualProj, Mean, PCGrad, Sum, UPGrad

MTOFRAME_HOOK_API = ">=1,<2"

__all__ = ["IMTLG", "METHODS", "MGDA", "AlignedMTL", "ConFIG", "DualProj", "Mean", "PCGrad", "Sum", "TorchJDMethod",
           "UPGrad"]


@mtoframe.hookimpl
def mtoframe_register(registry: mtoframe.Registry) -> None:
    for cls in METHODS:
        registry.add(cls)
