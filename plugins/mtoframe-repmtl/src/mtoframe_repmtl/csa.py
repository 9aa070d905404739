"""Cross-task saliency alignment (CSA) of Rep-MTL, from small Gram matrices.

For sample b and task t let ``S_{t,b}`` be the ``C×N`` saliency (``N = H'W'``), ``M_{t,b} = S Sᵀ``,
``a_{b,t}`` = mean over positions of ``S_{t,b}``, ``A_b = [a_{b,1} … a_{b,T}]`` (``C×T``) and
``Â_b = A_b A_bᵀ``. With ``z^t_b``, ``z^a_b`` the L2-normalised flattenings of ``M_{t,b}`` and ``Â_b``::

    L_csa = mean_(b,t) [ −cos(z^a_b, z^t_b)/τ + log Σ_{k≠b} exp(cos(z^a_b, z^a_k)/τ) ]

Wang, Li, Xu, "Rep-MTL", ICCV 2025, https://arxiv.org/abs/2507.21049 (no official code exists).

The ``C×C`` matrices are never formed. Every cosine follows from Gram identities::

    ⟨S Sᵀ, A Aᵀ⟩_F = ‖Aᵀ S‖²_F   (T×N)      ‖S Sᵀ‖_F = ‖Sᵀ S‖_F   (the smaller of C×C, N×N)
    ⟨Â_b, Â_k⟩_F = ‖A_bᵀ A_k‖²_F  (T×T)

Everything that reads the full saliency is one custom autograd function that processes a few
samples at a time and recomputes its Gram blocks in the backward, writing the whole gradient
into one ``S``-sized buffer: the extra memory is that buffer plus one ``min(C, N)²`` block per
chunk, O(B·T·C·N) overall, never O(B·T·C²).

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


def _chunks(s: Tensor) -> list[slice]:
    """Slices of samples whose Gram work space fits ``_CHUNK_ELEMENTS``."""
    c, n = s.shape[-2:]
    step = max(1, _CHUNK_ELEMENTS // (min(c, n) ** 2 + 2 * c * n))
    return [slice(i, i + step) for i in range(0, s.shape[0], step)]


class _SaliencyGrams(torch.autograd.Function):
    """Every quantity of CSA that touches the full saliency, with one gradient buffer.

    Input ``S`` (``[B, T, C, N]``, any strides) and detached per-sample scales ``c``; with
    ``u_{b,t} = c_b S_{b,t}`` and scaled anchors ``a_{b,t} = mean_n u_{b,t}`` (``A_bᵀ`` = ``a[b]``)::

        m[b, t]    = ‖u_{b,t} u_{b,t}ᵀ‖²_F                           (= ‖M‖², via the smaller Gram)
        a          = [B, T, C]
        q[b, t]    = ‖A_bᵀ u_{b,t}‖²_F       = ⟨Â_b, M_{b,t}⟩         (cross=False)
        q[b, t, k] = ‖A_bᵀ u_{k,t}‖²_F       = ⟨Â_b, M_{k,t}⟩         (cross=True)

    Autograd would allocate one full-size gradient per slice ``S[:, t]`` and one for the mean;
    this backward writes them all into a single ``S``-sized buffer, a few samples at a time.
    """

    @staticmethod
    def forward(ctx, s: Tensor, scale: Tensor, cross: bool) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        B, T = s.shape[:2]
        a = s.mean(dim=-1) * scale[:, None, None]
        m = s.new_empty(B, T)
        q = s.new_empty(B, T, B) if cross else s.new_empty(B, T)
        flat = a.reshape(B * T, -1)
        side = min(s.shape[-2:])
        # Small problems keep their Grams for the backward (a third of the work); large ones,
        # whose Grams would rival S in size, recompute them chunk by chunk.
        keep = B * T * side * side <= _CHUNK_ELEMENTS
        grams = s.new_empty((T, B, side, side) if keep else (0,))
        for t in range(T):
            for k in _chunks(s):
                u = s[k, t] * scale[k, None, None]
                g = _gram(u)
                if keep:
                    grams[t, k] = g
                m[k, t] = g.square().sum(dim=(-1, -2))
                if cross:
                    q[:, t, k] = torch.matmul(flat, u).unflatten(1, (B, T)).square().sum(dim=(-1, -2)).T
                else:
                    q[k, t] = torch.bmm(a[k], u).square().sum(dim=(-1, -2))
        ctx.save_for_backward(s, scale, a, grams)
        ctx.cross, ctx.keep = cross, keep
        return m, a, q

    @staticmethod
    @once_differentiable
    def backward(ctx, g_m: Tensor, g_a: Tensor, g_q: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        s, scale, a, grams = ctx.saved_tensors
        B, T, _, N = s.shape
        grad = torch.empty_like(s)
        ga = g_a.clone()  # plus what q sends back through the anchors
        flat = a.reshape(B * T, -1)
        for t in range(T):
            for k in _chunks(s):
                c = scale[k, None, None]
                u = s[k, t] * c
                g = grams[t, k] if ctx.keep else _gram(u)
                # d‖u uᵀ‖²/du = 4 (u uᵀ) u = 4 u (uᵀ u)
                gu = (g @ u if u.shape[-2] <= u.shape[-1] else u @ g) * (4 * g_m[k, t, None, None])
                # q = ‖Aᵀu‖²: dq/du = 2 A (Aᵀu), dq/dA = 2 u (Aᵀu)ᵀ
                if ctx.cross:
                    r = torch.matmul(flat, u).unflatten(1, (B, T))  # [k, B, T, N]
                    wr = r * (2 * g_q[:, t, k].T)[:, :, None, None]
                    gu += torch.matmul(flat.T, wr.flatten(1, 2))
                    ga += torch.einsum("kcn,kbsn->bsc", u, wr)
                else:
                    wr = torch.bmm(a[k], u) * (2 * g_q[k, t, None, None])
                    gu += torch.bmm(a[k].transpose(1, 2), wr)
                    ga[k] += torch.bmm(wr, u.transpose(1, 2))
                grad[k, t] = gu * c
        # a = c · mean_n S: every position gets c/N of the anchor's gradient
        grad += (ga * (scale[:, None, None] / N))[..., None]
        return grad, None, None


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
        m, a, q = _SaliencyGrams.apply(s, sample_scale(s), negatives == "task")
        aa = torch.einsum("btc,ksc->bkts", a, a).square().sum(dim=(-1, -2))  # [B, B] = ⟨Â_b, Â_k⟩
        a_norm = aa.diagonal().clamp_min(eps).sqrt()  # ‖Â_b‖
        m_norm = m.clamp_min(eps).sqrt()  # ‖M_{b,t}‖
        if negatives == "anchor":
            pos = q / (a_norm[:, None] * m_norm).clamp_min(eps)
            neg = (aa / (a_norm[:, None] * a_norm[None, :]).clamp_min(eps))[:, None, :].expand(B, T, B)
        else:
            neg = q / (a_norm[:, None, None] * m_norm.T[None, :, :]).clamp_min(eps)
            pos = torch.diagonal(neg, dim1=0, dim2=2).T
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
