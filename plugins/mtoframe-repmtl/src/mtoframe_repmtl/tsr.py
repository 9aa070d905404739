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

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._layout import as_btcn, full_precision, sample_scale, tiny


def entropy_forward(s_hat: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``per_task`` of the scaled channel-mean saliencies ``ŝ`` (``[B, T, N]``), and what
    :func:`entropy_backward` needs. Shared by :class:`_SaliencyEntropy` and the one-node form of
    both terms for vector saliencies (:mod:`mtoframe_repmtl.csa`).

    With ``P = |ŝ| / max(Σ_t |ŝ|, ε)`` and ``h = −P log max(P, ε)``: ``per_task[t] = mean_(b, n) h``,
    ``L_tsr = Σ_t per_task[t]``; each ``max(·, ε)`` passes its gradient where its argument is at
    least ``ε`` (``clamp_min``)."""
    eps = tiny(s_hat)
    mag = s_hat.abs()
    total = mag.sum(dim=1, keepdim=True)
    p = mag / total.clamp_min(eps)
    log_p = p.clamp_min(eps).log_()
    per_task = (p * log_p).mean(dim=(0, 2)).neg_()
    return per_task, (s_hat, total, p, log_p)


def entropy_backward(saved: tuple[Tensor, ...], g_loss: Tensor) -> Tensor:
    """``∂(g_loss · L_tsr)/∂ŝ`` from :func:`entropy_forward`'s ``saved``."""
    s_hat, total, p, log_p = saved
    eps = tiny(p)
    B, _, N = s_hat.shape
    # dh/dP = −log max(P, ε) − [P ≥ ε], each h weighing 1/(B·N) in the loss
    g_p = (log_p + (p >= eps)).mul_(-g_loss / (B * N))
    denom = total.clamp_min(eps)
    # P = |ŝ| / max(Σ|ŝ|, ε): the direct term, plus the shared denominator's
    g_total = (g_p * p).sum(dim=1, keepdim=True).div_(denom).mul_(total >= eps)
    return (g_p / denom).sub_(g_total).mul_(s_hat.sign())


class _SaliencyEntropy(torch.autograd.Function):
    """``(L_tsr, per_task)`` of ``ŝ`` (see :func:`entropy_forward`) as one autograd node: the term
    is a dozen small element-wise steps, whose per-operation cost (forward and backward)
    outweighed their arithmetic with many tasks. ``per_task`` is for logging, without gradient."""

    @staticmethod
    def forward(ctx: Any, s_hat: Tensor) -> tuple[Tensor, Tensor]:
        per_task, saved = entropy_forward(s_hat)
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(per_task)
        return per_task.sum(), per_task

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_loss: Tensor, _per_task: Tensor) -> Tensor:
        return entropy_backward(ctx.saved_tensors, g_loss)


def channel_mean_entropy(s_hat: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_tsr, per_task)`` of ``ŝ = c · mean_C S`` (``[B, T, N]``, ``c`` the detached sample
    scale), as :func:`mtoframe_repmtl.csa.csa_and_tsr` hands it over from the Gram pass."""
    with full_precision(s_hat):
        loss, per_task = _SaliencyEntropy.apply(s_hat)  # type: ignore[no-untyped-call]
        return loss, per_task


def tsr_terms(saliency: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_tsr, per_task)`` where ``per_task[t] = mean_i(−P_{i,t} log P_{i,t})`` sums to ``L_tsr``
    (the saliency entropy each task contributes; logged per task, without gradient)."""
    with full_precision(saliency):
        s = as_btcn(saliency, "tsr_loss")
        return channel_mean_entropy(s.mean(dim=2) * sample_scale(s)[:, None, None])


def tsr_loss(saliency: Tensor) -> Tensor:
    """Rep-MTL's TSR term of ``saliency`` (``[B, T, C, H, W]`` or ``[B, T, C]``): the mean over
    positions of the entropy of the tasks' normalised channel-mean saliency magnitudes.

    A scalar in ``[0, log T]``, differentiable w.r.t. ``saliency``; ``log T`` when all tasks'
    ``|Ŝ_t|`` are equal at every position; invariant to a common rescale of all ``S_t``.
    """
    return tsr_terms(saliency)[0]
