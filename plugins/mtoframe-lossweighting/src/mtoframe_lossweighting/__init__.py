"""mtoframe-lossweighting: loss-level MTO methods (UW, DWA, GLS, RLW, SI/log, IMTL-L, GradNorm,
STCH) and ExcessMTL, as one mtoframe plugin distribution.

Stacking (DESIGN §3). Each loss-level method here multiplies the incoming weights or transforms
the losses in ``on_task_losses``, so a gradient method after it sees the weighted tasks'
gradients:

* meaningful, accepted: a loss-level method followed by gradient transforms (PCGrad, GradVac,
  GradDrop project the weighted rows), by aggregators that read the rows' scales (CAGrad, MGDA
  without normalisation, UPGrad, Aligned-MTL), and by regularisers (Rep-MTL).
* rejected with the reason: two loss-level methods in one stack (two weighting schemes fight
  over the same weights; their product is no published method); a loss-level method before an
  aggregator that is invariant to per-task gradient scales or imposes its own weights (Nash-MTL,
  DB-MTL, ExcessMTL: the loss weights would have no effect; IMTL-G: they would change only the
  step length), except the published hybrid IMTL-L + IMTL-G (LibMTL's IMTL), which IMTL-G
  declares.

ExcessMTL reads per-task gradients, so it is an aggregator, not a loss-level method.
"""

from __future__ import annotations

from mtoframe import Registry, hookimpl

from .dwa import DWA
from .excessmtl import ExcessMTL
from .gls import GLS
from .gradnorm import GradNorm
from .imtll import IMTLL
from .rlw import RLW
from .si import SI
from .stch import STCH
from .uw import UW

MTOFRAME_HOOK_API = ">=1,<2"

METHODS = (UW, DWA, GLS, RLW, SI, IMTLL, GradNorm, STCH, ExcessMTL)

__all__ = ["DWA", "GLS", "IMTLL", "METHODS", "RLW", "SI", "STCH", "UW", "ExcessMTL", "GradNorm"]


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    for cls in METHODS:
        registry.add(cls)
