"""Cross-task saliency alignment (CSA) of Rep-MTL, from small Gram matrices.

For sample b and task t let ``S_{t,b}`` be the ``C×N`` saliency (``N = H'W'``), ``M_{t,b} = S Sᵀ``,
``a_{b,t}`` = mean over positions of ``S_{t,b}``, ``A_b = [a_{b,1} … a_{b,T}]`` (``C×T``) and
``Â_b = A_b A_bᵀ``. With ``z^t_b``, ``z^a_b`` the L2-normalised flattenings of ``M_{t,b}`` and ``Â_b``::

    L_csa = mean_(b,t) [ −cos(z^a_b, z^t_b)/τ + log Σ_{k≠b} exp(cos(z^a_b, z^a_k)/τ) ]

Wang, Li, Xu, "Rep-MTL", ICCV 2025, https://arxiv.org/abs/2507.21049 (no official code exists).

The ``C×C`` matrices are never formed. Every cosine follows from Gram identities::

    ⟨S Sᵀ, A Aᵀ⟩_F = ‖Aᵀ S‖²_F   (T×N)      ‖S Sᵀ‖_F = ‖Sᵀ S‖_F   (the smaller of C×C, N×N)
    ⟨Â_b, Â_k⟩_F = ‖A_bᵀ A_k‖²_F  (T×T)

and ``‖S Sᵀ‖²_F`` is a custom autograd function that processes a few samples at a time and
recomputes its Gram matrix in the backward, so the extra memory is one ``min(C, N)²`` block per
chunk plus the gradient itself: O(B·T·C·N) overall, never O(B·T·C²).

Ambiguities, each an option (the paper has no code to settle them):

* ``negatives="anchor"`` (default, the literal reading): the negatives of ``(b, t)`` are the other
  samples' anchors ``z^a_k``; ``"task"``: the other samples' saliency Grams of the same task,
  ``z^t_k`` (InfoNCE between an anchor and task tensors), also ``B − 1`` negatives.
* ``positive_in_denominator=False`` (default, literal): the log-sum-exp runs over negatives only;
  ``True`` is the usual InfoNCE ``−log(e^{pos/τ} / (e^{pos/τ} + Σ e^{neg/τ}))``.
* ``tau = 0.07``: not reported in the paper (MoCo/SupCon's common value).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mtoframe.errors import BatchError, OptionError

from ._layout import as_btcn, full_precision, sample_scale, tiny

NEGATIVES = ("anchor", "task")
#: elements of work space per chunk of the Gram norm (64 MiB in float32).
_CHUNK_ELEMENTS = 1 << 24


def _gram(u: Tensor) -> Tensor:
    """The smaller Gram matrix of ``u`` (``[b, C, N]``): ``u uᵀ`` if ``C ≤ N`` else ``uᵀ u``."""
    return u @ u.transpose(-1, -2) if u.shape[-2] <= u.shape[-1] else u.transpose(-1, -2) @ u


def _chunks(s: Tensor) -> range:
    _, c, n = s.shape
    step = max(1, _CHUNK_ELEMENTS // (min(c, n) ** 2 + c * n))
    return range(0, s.shape[0], step)


class _GramSqNorm(torch.autograd.Function):
    """``‖(c_b S_b)(c_b S_b)ᵀ‖²_F`` for ``S`` of shape ``[B, C, N]`` and constants ``c`` (``[B]``)."""

    @staticmethod
    def forward(ctx, s: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(s, scale)
        out = torch.empty(s.shape[0], dtype=s.dtype, device=s.device)
        step = _chunks(s).step
        for i in _chunks(s):
            u = s[i : i + step] * scale[i : i + step, None, None]
            out[i : i + step] = _gram(u).square().sum(dim=(-1, -2))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        s, scale = ctx.saved_tensors
        grad = torch.empty_like(s)
        step = _chunks(s).step
        for i in _chunks(s):
            c = scale[i : i + step, None, None]
            u = s[i : i + step] * c
            # d‖u uᵀ‖²/du = 4 (u uᵀ) u = 4 u (uᵀ u); du/ds = c
            g = _gram(u)
            du = g @ u if u.shape[-2] <= u.shape[-1] else u @ g
            grad[i : i + step] = du * (4 * c * grad_out[i : i + step, None, None])
        return grad, None


def csa_terms(
    saliency: Tensor,
    tau: float = 0.07,
    *,
    negatives: str = "anchor",
    positive_in_denominator: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_csa, cos_pos [B, T], cos_neg [B, T, B])``; ``cos_neg[b, t, b]`` is not a negative
    (it is masked out of the loss)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise OptionError(f"csa_loss: tau must be a positive number, got {tau!r}")
    if negatives not in NEGATIVES:
        raise OptionError(f"csa_loss: negatives must be one of {', '.join(map(repr, NEGATIVES))}; got {negatives!r}")
    with full_precision(saliency):
        s = as_btcn(saliency, "csa_loss")
        B, T = s.shape[:2]
        if B < 2:
            raise BatchError(
                f"csa_loss needs at least 2 samples per batch (its negatives are the other samples), got B={B}; "
                "use batches of 2 or more (e.g. DataLoader(drop_last=True)) or use_csa=False"
            )
        eps = tiny(s)
        scale = sample_scale(s)
        a = s.mean(dim=-1) * scale[:, None, None]  # [B, T, C]: rows of A_bᵀ
        aa = torch.einsum("btc,ksc->bkts", a, a).square().sum(dim=(-1, -2))  # [B, B] = ⟨Â_b, Â_k⟩
        a_norm = aa.diagonal().clamp_min(eps).sqrt()  # ‖Â_b‖
        # per task: s[:, t] is [B, C, N] and, for the trainer's [T, B, ...] saliency, contiguous
        m_norm = torch.stack([_GramSqNorm.apply(s[:, t], scale) for t in range(T)], dim=1).clamp_min(eps).sqrt()
        inner = torch.stack(
            [(torch.bmm(a, s[:, t]) * scale[:, None, None]).square().sum(dim=(-1, -2)) for t in range(T)], dim=1
        )  # [B, T] = ⟨Â_b, M_{t,b}⟩
        pos = inner / (a_norm[:, None] * m_norm).clamp_min(eps)
        if negatives == "anchor":
            neg = (aa / (a_norm[:, None] * a_norm[None, :]).clamp_min(eps))[:, None, :].expand(B, T, B)
        else:
            flat = a.reshape(B * T, -1)
            # ⟨Â_b, M_{t,k}⟩ = ‖A_bᵀ S_{t,k}‖²_F for every pair (b, k): [K, B·T, N] per task
            cross = torch.stack(
                [
                    (torch.matmul(flat, s[:, t]) * scale[:, None, None]).unflatten(1, (B, T)).square().sum(dim=(-1, -2))
                    for t in range(T)
                ],
                dim=-1,
            )  # [K, B, T]
            neg = cross.permute(1, 2, 0) / (a_norm[:, None, None] * m_norm.T[None, :, :]).clamp_min(eps)
        self_pair = torch.eye(B, dtype=torch.bool, device=s.device)[:, None, :]
        logits = (neg / tau).masked_fill(self_pair, float("-inf"))
        if positive_in_denominator:
            logits = torch.cat([(pos / tau)[..., None], logits], dim=-1)
        loss = (torch.logsumexp(logits, dim=-1) - pos / tau).mean()
        return loss, pos, neg


def csa_loss(
    saliency: Tensor,
    tau: float = 0.07,
    *,
    negatives: str = "anchor",
    positive_in_denominator: bool = False,
) -> Tensor:
    """Rep-MTL's CSA term of ``saliency`` (``[B, T, C, H, W]`` or ``[B, T, C]``, ``B ≥ 2``).

    Contrastive alignment of each task's saliency Gram ``S_{t,b} S_{t,b}ᵀ`` with the sample's
    cross-task anchor Gram ``A_b A_bᵀ`` (positive) against other samples' anchors (negatives),
    computed without any ``C×C`` matrix. A scalar differentiable w.r.t. ``saliency``; see the
    module docstring for the formula and the options.
    """
    return csa_terms(saliency, tau, negatives=negatives, positive_in_denominator=positive_in_denominator)[0]
