"""Aligned-MTL: align the task gradients to an orthogonal, equal-norm system.

Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023
(https://arxiv.org/abs/2305.19000). With the eigendecomposition ``G Gᵀ = V Λ Vᵀ`` restricted to
the ``r`` eigenvalues above the cut-off ``λ_max · T · eps``::

    B = σ · V Λ^{-1/2} Vᵀ          Ĝ = B G  (Ĝ Ĝᵀ = σ² I on the range)
    d = Σ_t α_t g_t,   α = 1ᵀ B      (the sum of the aligned rows)

``scale`` picks ``σ``: ``"min"`` (``√λ_min`` of the kept eigenvalues; the paper, the official
code's default and LibMTL), ``"median"`` (``√`` of the lower median, official code),
``"rmse"`` (``√(Σλ/r)``, official code). ``reduction``: ``"sum"`` of the aligned rows (official
code and LibMTL, default) or ``"mean"`` (TorchJD's ``AlignedMTL``, which equals this with
``reduction="mean"`` to round-off; checked in the tests). Uses the symmetric eigendecomposition
in float64 (``numpy.linalg.eigh`` on the host copy of the ``T×T`` Gram matrix; the official code
calls ``torch.symeig``, which PyTorch removed). Heads receive their
unweighted loss gradient (LibMTL).

``rank_cutoff`` picks ``eps``: ``"float32"`` (default) is float32's machine epsilon (1.19e-7)
whatever the dtype, as the official code, LibMTL and TorchJD (``torch.finfo().eps`` of the
default dtype); ``"float64"`` is float64's (2.2e-16), the numerical rank of the float64 Gram
matrix. They differ where the gradients are nearly collinear: an eigenvalue ratio of 1.5e-10 is
cut by the first (the update keeps the scale of the dominant direction) and kept by the second
(σ = √λ_min then shrinks the update by about five orders of magnitude).

Only the dominant direction survives when one task's gradient is many orders larger than the
others (ratio of eigenvalues below the cut-off): the update is then that task's gradient alone,
as in the references. A Gram matrix that overflowed in the gradients' dtype (e.g. float32 rows
above ~1e19) has no eigendecomposition: the update is then NaN, not a silent zero, so the
trainer's ``nonfinite`` policy raises or skips the step; ``mtoframe.aggregate`` rescales such a
matrix first (:mod:`mtoframe.scaling`) and returns the method's answer.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch

from mtoframe import GramWeighting, StepContext
from mtoframe.gram_weighting import TaskState
from mtoframe.numerics import from_host, host64
from mtoframe.options import one_of


@attrs.frozen(kw_only=True)
class AlignedMTLOptions:
    scale: str = attrs.field(default="min", validator=one_of(("min", "median", "rmse")))
    reduction: str = attrs.field(default="sum", validator=one_of(("sum", "mean")))
    #: machine epsilon of the rank cut-off λ_max·T·eps: "float32" (references) or "float64".
    rank_cutoff: str = attrs.field(default="float32", validator=one_of(("float32", "float64")))


RANK_EPS = {"float32": torch.finfo(torch.float32).eps, "float64": torch.finfo(torch.float64).eps}


def aligned_weights(K: torch.Tensor, scale: str = "min", rank_cutoff: str = "float32") -> torch.Tensor:
    """``α = 1ᵀB`` from the Gram matrix (any device; solved in numpy on the host, where the
    eigendecomposition and the dozen tiny operations around it cost a fraction of torch's
    per-operation overhead). A non-finite ``K`` (an overflowed Gram matrix) has no
    eigendecomposition: the weights are NaN, not zeros."""
    T = K.shape[0]
    k = host64(K)
    if not np.isfinite(k).all():
        return torch.full((T,), torch.nan, dtype=K.dtype, device=K.device)
    lam, V = np.linalg.eigh(k)  # ascending, like torch.linalg.eigh (both read the lower triangle)
    tol = lam.max() * T * RANK_EPS[rank_cutoff]
    keep = lam > tol
    rank = int(keep.sum())
    if rank == 0:
        return torch.zeros(T, dtype=K.dtype, device=K.device)
    inv_sqrt = np.where(keep, 1.0 / np.sqrt(np.maximum(lam, tol)), 0.0)
    if scale == "min":
        sigma2 = lam[keep].min()
    elif scale == "median":
        # the kept eigenvalues are the last `rank`; lower median among them
        sigma2 = lam[(T - rank) + (rank - 1) // 2]
    else:
        sigma2 = lam[keep].sum() / rank
    B = np.sqrt(max(float(sigma2), 0.0)) * (V * inv_sqrt) @ V.T
    return from_host(B.sum(0), K)


class AlignedMTL(GramWeighting):
    __doc__ = __doc__
    name = "alignedmtl"
    summary = "Aligned-MTL: sum of the task gradients aligned to an orthogonal equal-norm system."
    paper = "Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023"
    defaults_reproduce = "official code and LibMTL (scale 'min', reduction sum, float32-eps rank cut-off)"
    Options = AlignedMTLOptions
    heads_receive = "their unweighted loss gradient"

    @property
    def scale_degree(self) -> float | None:
        # B = σ V Λ^(-1/2) Vᵀ does not change with the scale of G, so d = 1ᵀB G scales with it
        return 1.0

    host = True

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> torch.Tensor:
        alpha = aligned_weights(gram, self.options.scale, self.options.rank_cutoff)
        return alpha / gram.shape[0] if self.options.reduction == "mean" else alpha
