"""Aligned-MTL: align the task gradients to an orthogonal, equal-norm system.

Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023
(https://arxiv.org/abs/2305.19000). With the eigendecomposition ``G Gᵀ = V Λ Vᵀ`` restricted to
the ``r`` eigenvalues above ``λ_max · T · eps`` (the numerical rank, as the official code)::

    B = σ · V Λ^{-1/2} Vᵀ          Ĝ = B G  (Ĝ Ĝᵀ = σ² I on the range)
    d = Σ_t α_t g_t,   α = 1ᵀ B      (the sum of the aligned rows)

``scale`` picks ``σ``: ``"min"`` (``√λ_min`` of the kept eigenvalues; the paper, the official
code's default and LibMTL), ``"median"`` (``√`` of the lower median, official code),
``"rmse"`` (``√(Σλ/r)``, official code). ``reduction``: ``"sum"`` of the aligned rows (official
code and LibMTL, default) or ``"mean"`` (TorchJD's ``AlignedMTL``, which equals this with
``reduction="mean"`` to round-off; checked in the tests). Uses ``torch.linalg.eigh`` in float64 on the device
(the official code calls ``torch.symeig``, which PyTorch removed). Heads receive their
unweighted loss gradient (LibMTL).
"""

from __future__ import annotations

import attrs
import torch

from mtoframe import Method, Role, hookimpl
from mtoframe.context import StepContext
from mtoframe.options import one_of

from ._common import combine


@attrs.frozen(kw_only=True)
class AlignedMTLOptions:
    scale: str = attrs.field(default="min", validator=one_of(("min", "median", "rmse")))
    reduction: str = attrs.field(default="sum", validator=one_of(("sum", "mean")))


def aligned_weights(K: torch.Tensor, scale: str = "min") -> torch.Tensor:
    T = K.shape[0]
    lam, V = torch.linalg.eigh(K)
    tol = lam.max() * T * torch.finfo(K.dtype).eps
    keep = lam > tol
    inv_sqrt = torch.where(keep, lam.clamp_min(tol).rsqrt(), torch.zeros_like(lam))
    rank = keep.sum()
    if scale == "min":
        sigma2 = torch.where(keep, lam, torch.full_like(lam, torch.inf)).min()
    elif scale == "median":
        # eigh sorts ascending: the kept ones are the last `rank`; lower median among them
        idx = (T - rank) + (rank - 1) // 2
        sigma2 = lam.gather(0, idx.clamp(0, T - 1).reshape(1)).squeeze(0)
    else:
        sigma2 = torch.where(keep, lam, torch.zeros_like(lam)).sum() / rank.clamp_min(1)
    sigma = torch.where(rank > 0, sigma2.clamp_min(0), torch.zeros_like(sigma2)).sqrt()
    B = sigma * (V * inv_sqrt) @ V.T
    return B.sum(0)


class AlignedMTL(Method):
    __doc__ = __doc__
    name = "alignedmtl"
    summary = "Aligned-MTL: sum of the task gradients aligned to an orthogonal equal-norm system."
    paper = "Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023"
    defaults_reproduce = "official code and LibMTL (scale 'min', reduction sum)"
    Options = AlignedMTLOptions
    roles = Role.AGGREGATOR

    @property
    def scale_degree(self) -> float | None:
        # B = σ V Λ^(-1/2) Vᵀ does not change with the scale of G, so d = 1ᵀB G scales with it
        return 1.0
    heads_receive = "their unweighted loss gradient"

    @hookimpl
    def on_shared_grads(self, ctx: StepContext) -> None:
        g = ctx.grads
        alpha = aligned_weights(ctx.gram().to(torch.float64), self.options.scale)
        if self.options.reduction == "mean":
            alpha = alpha / g.shape[0]
        ctx.set_update(combine(alpha, g))
