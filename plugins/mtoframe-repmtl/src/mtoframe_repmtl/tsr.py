"""Task-specific saliency regulation (TSR) of Rep-MTL.

With saliencies ``S_t = ∂L_t/∂Z`` (``B×C×H'×W'`` per task)::

    Ŝ_t     = mean over channels of S_t                 (signed, B×H'×W')
    P_{i,t} = |Ŝ_{i,t}| / Σ_k |Ŝ_{i,k}|                  at every position i = (b, h, w)
    L_tsr   = mean_i ( −Σ_t P_{i,t} log P_{i,t} )        ∈ [0, log T]

Wang, Li, Xu, "Rep-MTL: Unleashing the Power of Representation-level Task Saliency for
Multi-Task Learning", ICCV 2025, https://arxiv.org/abs/2507.21049 (no official code exists).

Numerics (the paper is silent): no additive eps in the normalisation. Saliencies of batch-mean
losses are O(1/(B·H'W')), so ``|Ŝ| / (Σ|Ŝ| + 1e-8)`` would bias ``P`` by an amount that depends
on the batch and image size; instead the denominator is clamped at the dtype's smallest normal
number after the per-sample rescale of :func:`mtoframe_repmtl._layout.sample_scale`, and
``0·log 0 = 0`` (a position where every task's saliency is zero contributes entropy 0). The
result is exactly invariant to a common rescale of all ``S_t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._layout import as_btcn, full_precision, sample_scale, tiny


def tsr_terms(saliency: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_tsr, per_task)`` where ``per_task[t] = mean_i(−P_{i,t} log P_{i,t})`` sums to ``L_tsr``
    (the saliency entropy each task contributes; logged per task)."""
    with full_precision(saliency):
        s = as_btcn(saliency, "tsr_loss")
        eps = tiny(s)
        s_hat = s.mean(dim=2) * sample_scale(s)[:, None, None]  # [B, T, N]
        mag = s_hat.abs()
        p = mag / mag.sum(dim=1, keepdim=True).clamp_min(eps)
        # clamp inside the log only: P log P -> 0 as P -> 0, and the gradient stays finite there
        # (torch.xlogy(p, p) back-propagates 0/0 = NaN at p = 0).
        h = -(p * torch.log(p.clamp_min(eps)))
        per_task = h.mean(dim=(0, 2))
        return per_task.sum(), per_task


def tsr_loss(saliency: Tensor) -> Tensor:
    """Rep-MTL's TSR term of ``saliency`` (``[B, T, C, H, W]`` or ``[B, T, C]``): the mean over
    positions of the entropy of the tasks' normalised channel-mean saliency magnitudes.

    A scalar in ``[0, log T]``, differentiable w.r.t. ``saliency``; ``log T`` when all tasks'
    ``|Ŝ_t|`` are equal at every position; invariant to a common rescale of all ``S_t``.
    """
    return tsr_terms(saliency)[0]
