"""Cross-task saliency alignment (CSA) of Rep-MTL, from small Gram matrices.

For sample b and task t let ``S_{t,b}`` be the ``C×N`` saliency (``N = H'W'``), ``M_{t,b} = S Sᵀ``,
``a_{b,t}`` = mean over positions of ``S_{t,b}``, ``A_b = [a_{b,1} … a_{b,T}]`` (``C×T``) and
``Â_b = A_b A_bᵀ``. With ``z^t_b``, ``z^a_b`` the L2-normalised flattenings of ``M_{t,b}`` and ``Â_b``::

    L_csa = mean_(b,t) [ −cos(z^a_b, z^t_b)/τ + log Σ_{k≠b} exp(cos(z^a_b, z^a_k)/τ) ]

Wang, Li, Xu, "Rep-MTL", ICCV 2025, https://arxiv.org/abs/2507.21049 (no official code exists).

The saliency Grams ``M`` are never formed. Every cosine follows from Gram identities::

    ⟨S Sᵀ, A Aᵀ⟩_F = ‖Aᵀ S‖²_F   (T×N)      ‖S Sᵀ‖_F = ‖Sᵀ S‖_F   (the smaller of C×C, N×N)
    ⟨Â_b, Â_k⟩_F = ‖A_bᵀ A_k‖²_F  (T×T)    or  ⟨Â_b, Â_k⟩_F directly   (C×C, see below)

Everything that reads the full saliency is one custom autograd function that processes a few
samples at a time, every task at once, and recomputes its Gram blocks in the backward, writing
the whole gradient into one ``S``-sized buffer: the extra memory is that buffer plus one
``min(C, N)²`` block per (sample, task) of a chunk, O(B·T·C·N) overall, never O(B·T·C²). The
anchor products take the ``C×C`` anchor Grams ``Â_b`` (``B·C²``, independent of ``T``) only
where that is cheaper than the ``T×T`` form (many tasks) and fits the same work-space budget.
Vector saliencies (``N = 1``) need no chunking: there ``a_{b,t} = u_{b,t}`` and every term
follows from the ``T×T`` Grams ``A_b A_bᵀ``.

Ambiguities, each an option (the paper has no code to settle them):

* ``negatives="anchor"`` (default, the literal reading): the negatives of ``(b, t)`` are the other
  samples' anchors ``z^a_k``; ``"task"``: the other samples' saliency Grams of the same task,
  ``z^t_k`` (InfoNCE between an anchor and task tensors), also ``B − 1`` negatives.
* ``positive_in_denominator=False`` (default, literal): the log-sum-exp runs over negatives only;
  ``True`` is the usual InfoNCE ``−log(e^{pos/τ} / (e^{pos/τ} + Σ e^{neg/τ}))``.
* ``tau`` (default 2.0): not reported in the paper. MoCo/SupCon's 0.07 collapses training (CSA's
  gradient is of order λ/τ and does not shrink with the task losses); 2.0 is the measured choice
  of the sweep in ``docs/BENCHMARKS.md``.

Under torch.distributed (``N`` ranks, ``B`` samples each) the negatives are the **global**
batch's: each rank gathers every rank's anchors (and, for ``"task"``, every rank's cross products
``⟨Â_b, M_{k,t}⟩`` and ``‖M_{k,t}‖``, never the saliency itself) with
:func:`mtoframe.distributed.all_gather_cat` and returns the mean of **its own** ``B·T`` terms
against all ``N·B − 1`` negatives (self at column ``rank·B + b``). The union loss is the mean of
the ranks' values, and since the gather's backward sums every rank's gradient for this rank's
rows, the trainer's mean reduction of ``.grad`` yields the union loss's gradient exactly. Every
rank must call it in the same order with the same ``B``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mtoframe.distributed import all_gather_cat, rank, world_size
from mtoframe.errors import BatchError, OptionError

from ._layout import as_btcn, full_precision, sample_scale, tiny
from .tsr import channel_mean_entropy, entropy_backward, entropy_forward

NEGATIVES = ("anchor", "task")
#: τ is not reported in the paper; 2.0 is the measured choice (docs/BENCHMARKS.md, Rep-MTL sweep)
DEFAULT_TAU = 2.0
#: elements of work space per chunk of the Gram norm (64 MiB in float32).
_CHUNK_ELEMENTS = 1 << 24
#: elements of a chunk's saliency slice (1 MiB in float32): its buffers are allocated afresh on
#: every call, and on CPU each page of a fresh allocation this large costs a fault on first touch,
#: which made a whole-batch slice slower than its products (measured on scenes' 8×3×128×256)
_SLICE_ELEMENTS = 1 << 18


def _gram(u: Tensor, out: Tensor | None = None) -> Tensor:
    """The smaller Gram matrix of ``u`` (``[..., C, N]``): ``u uᵀ`` if ``C ≤ N`` else ``uᵀ u``
    (written into ``out`` when given)."""
    left, right = (u, u.transpose(-1, -2)) if u.shape[-2] <= u.shape[-1] else (u.transpose(-1, -2), u)
    return torch.matmul(left, right) if out is None else torch.matmul(left, right, out=out)


def _chunks(s: Tensor, against: int) -> list[slice]:
    """Slices of samples whose work space (every task at once) fits ``_CHUNK_ELEMENTS``;
    ``against`` is the number of anchor rows each task slice is multiplied with (``T`` for a
    sample's own anchors, ``B'·T`` for the cross products)."""
    T, c, n = s.shape[1:]
    per_sample = T * (min(c, n) ** 2 + 2 * c * n + against * n)
    step = max(1, min(_CHUNK_ELEMENTS // per_sample, _SLICE_ELEMENTS // (T * c * n)))
    return [slice(i, min(i + step, s.shape[0])) for i in range(0, s.shape[0], step)]


def _slice_buffer(s: Tensor, chunks: list[slice]) -> Tensor:
    """Work space for one chunk's ``[b, T, C, N]`` slice, reused across chunks: CPU allocations
    this size are page-faulted afresh each time."""
    return s.new_empty(chunks[0].stop - chunks[0].start, *s.shape[1:])


class _SaliencyGrams(torch.autograd.Function):
    """Every quantity of CSA that touches the full saliency, with one gradient buffer.

    Input ``S`` (``[B, T, C, N]``, any strides) and detached per-sample scales ``c``; with
    ``u_{b,t} = c_b S_{b,t}`` and scaled anchors ``a_{b,t} = mean_n u_{b,t}`` (``A_bᵀ`` = ``a[b]``)::

        m[b, t]    = ‖u_{b,t} u_{b,t}ᵀ‖²_F                           (= ‖M‖², via the smaller Gram)
        a          = [B, T, C]
        q[b, t]    = ‖A_bᵀ u_{b,t}‖²_F       = ⟨Â_b, M_{b,t}⟩         (cross=False)
        q[b, t, k] = ‖A_bᵀ u_{k,t}‖²_F       = ⟨Â_b, M_{k,t}⟩         (cross=True)
        ŝ[b, t]    = mean over channels of u_{b,t}   ([B, T, N]; with channel_mean, else empty)

    ``ŝ`` is TSR's input: taking it from here, where each chunk is in cache, leaves the saliency a
    single gradient node when both terms run, where a second reader would cost autograd a
    saliency-sized sum of the two gradients.

    With ``anchors`` (``[B', T, C]``, cross only) the cross products are taken against those
    anchors instead of ``a`` (``q`` is ``[B', T, B]``) and their gradient is returned: under
    torch.distributed they are every rank's anchors, which depend on this call's ``a`` through
    a collective, so they cannot be this call's own output.

    Every task is processed at once (batched matrix products over ``[b, T]``), a few samples
    at a time: the per-task loop it replaces cost ``T`` rounds of small kernels, which dominated
    with many tasks and small representations. Autograd would allocate one full-size gradient
    for the scaled copy and one for the mean; this backward writes them into a single
    ``S``-sized buffer.
    """

    @staticmethod
    def forward(
        ctx: Any, s: Tensor, scale: Tensor, cross: bool, anchors: Tensor | None = None, channel_mean: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, T = s.shape[:2]
        external = anchors is not None
        # with own anchors each chunk's anchors come from its scaled slice, already in cache; the
        # cross products need every sample's anchors before the first chunk
        a = s.mean(dim=-1).mul_(scale[:, None, None]) if cross else s.new_empty(B, T, s.shape[2])
        against = anchors.detach() if anchors is not None else a
        Bq = against.shape[0]
        m = s.new_empty(B, T)
        q = s.new_empty(Bq, T, B) if cross else s.new_empty(B, T)
        s_hat = s.new_empty((B, T, s.shape[3]) if channel_mean else (0,))
        flat = against.reshape(Bq * T, -1)
        side = min(s.shape[-2:])
        # Small problems keep their Grams for the backward (a third of the work); large ones,
        # whose Grams would rival S in size, recompute them chunk by chunk.
        keep = B * T * side * side <= _CHUNK_ELEMENTS
        grams = s.new_empty((B, T, side, side) if keep else (0,))
        chunks = _chunks(s, Bq * T if cross else T)
        buf = _slice_buffer(s, chunks)
        for k in chunks:
            u = torch.mul(s[k], scale[k, None, None, None], out=buf[: k.stop - k.start])  # [b, T, C, N]
            if not cross:
                torch.mean(u, dim=-1, out=a[k])
            if channel_mean:
                torch.mean(u, dim=2, out=s_hat[k])
            g = _gram(u, out=grams[k] if keep else None)
            m[k] = torch.linalg.vector_norm(g, dim=(-2, -1)).square_()
            if cross:  # [b, T, Bq·T, N] -> [b, T, Bq]
                r = torch.matmul(flat, u).reshape(*u.shape[:2], Bq, T, -1)
                q[:, :, k] = r.square().sum(dim=(-1, -2)).permute(2, 1, 0)
            elif u.shape[-2] <= u.shape[-1]:  # g is u uᵀ: ‖A_bᵀ u‖² = Σ_s a_sᵀ (u uᵀ) a_s, at C×C cost
                anchors_t = a[k].transpose(1, 2)[:, None]  # A_b, [b, 1, C, T]
                q[k] = torch.matmul(g, anchors_t).mul_(anchors_t).sum(dim=(-1, -2))
            else:
                q[k] = _anchors_t(a[k], u).square().sum(dim=(-1, -2))
        ctx.save_for_backward(s, scale, a, grams, against if external else a.new_empty(0))
        ctx.cross, ctx.keep, ctx.external, ctx.channel_mean = cross, keep, external, channel_mean
        if not channel_mean:
            ctx.mark_non_differentiable(s_hat)
        return m, a, q, s_hat

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g_m: Tensor, g_a: Tensor, g_q: Tensor, g_s_hat: Tensor
    ) -> tuple[Tensor, None, None, Tensor | None, None]:
        s, scale, a, grams, anchors = ctx.saved_tensors
        T, C, N = s.shape[1:]
        own = not ctx.cross and C <= N
        # the own-anchor path writes the gradient in S's memory order (the trainer's saliency is
        # [T, B, ...] underneath), so each task's slice reaches the heads' double backward
        # contiguous; the others write it contiguous, whatever the strides of S. Either way each
        # chunk's gradient is written by its products in place, with no pass to scale and scatter it.
        grad = torch.empty_like(s) if own else s.new_empty(s.shape)
        ga = g_a.clone()  # plus what q sends back through the anchors
        against = anchors if ctx.external else a
        g_against = torch.zeros_like(anchors) if ctx.external else ga
        Bq = against.shape[0]
        flat = against.reshape(Bq * T, -1)
        chunks = _chunks(s, Bq * T if ctx.cross else T)
        n0 = chunks[0].stop - chunks[0].start
        side = min(s.shape[-2:])
        if own:
            # two extra columns of the Gram factor and rows of u carry the two terms constant along
            # one axis (the anchors' gradient over positions, TSR's over channels) through the one
            # product, instead of two more passes over each chunk's gradient
            u_buf = s.new_empty(n0, T, C + 2, N)
            u_buf[:, :, C] = 1.0
            u_buf[:, :, C + 1] = 0.0
            g_buf = s.new_empty(n0, T, C, C + 2)
            g_buf[..., C + 1] = 1.0
        else:
            u_buf = _slice_buffer(s, chunks)
            g_buf = s.new_empty(n0, T, side, side)
        for k in chunks:
            c = scale[k, None]  # [b, 1]: u = c·S, so every term below carries one more factor c
            n = k.stop - k.start
            u = torch.mul(s[k], c[..., None, None], out=u_buf[:n, :, :C] if own else u_buf[:n])
            # d‖u uᵀ‖²/du = 4 (u uᵀ) u = 4 u (uᵀ u); the factor goes on the smaller Gram (a copy:
            # the saved one must survive a retained graph's second backward)
            coef = (4 * g_m[k] * c)[..., None, None]
            gram = grams[k] if ctx.keep else _gram(u)
            gu = grad[k]
            if own:
                # gram is G = u uᵀ (C×C) and q = Σ_s a_sᵀ G a_s: dq/du = 2 Â u with Â = A Aᵀ and
                # dq/da_s = 2 G a_s, so both terms of u's gradient are one product (4 g_m G + 2 g_q Â) u
                a_k = a[k]
                a_hat = torch.bmm(a_k.transpose(1, 2), a_k)[:, None]  # [b, 1, C, C]
                torch.mul(gram, coef, out=g_buf[:n, ..., :C]).addcmul_(a_hat, (2 * g_q[k] * c)[..., None, None])
                w = torch.einsum("bt,btcd->bcd", g_q[k], gram)  # Σ_t g_q G_t
                g_own = ga[k].add_(torch.bmm(a_k, w), alpha=2.0)
                # a = c · mean_n S: every position gets c/N of the anchor's gradient
                torch.mul(g_own, c[..., None] / N, out=g_buf[:n, ..., C])
                if ctx.channel_mean:  # ŝ = c · mean_C S: every channel gets c/C of its gradient
                    torch.mul(g_s_hat[k], c[..., None] / C, out=u_buf[:n, :, C + 1])
                _matmul_into(gu, g_buf[:n], u_buf[:n])
                continue
            g = torch.mul(gram, coef, out=g_buf[:n]) if ctx.keep else gram.mul_(coef)
            torch.matmul(g, u, out=gu) if u.shape[-2] <= u.shape[-1] else torch.matmul(u, g, out=gu)
            # q = ‖Aᵀu‖²: dq/du = 2 A (Aᵀu), dq/dA = 2 u (Aᵀu)ᵀ
            if ctx.cross:
                r = torch.matmul(flat, u).reshape(*u.shape[:2], Bq, T, -1)  # [b, T, Bq, T, N]
                wr = r.mul_((2 * g_q[:, :, k].permute(2, 1, 0))[..., None, None]).flatten(2, 3)
                gu += torch.matmul(flat.T, wr).mul_(c[..., None, None])
                g_against += torch.einsum("btcn,btrn->rc", u, wr).view_as(g_against)
            else:
                wr = _anchors_t(a[k], u).mul_((2 * g_q[k] * c)[..., None, None])  # [b, T, T, N]
                _add_anchors_combined(gu, a[k], wr)
                # a = c · mean_n S: every position gets c/N of the anchor's gradient (complete
                # here, where the anchors are the chunk's own: added while it is in cache)
                g_own = ga[k].mul_(c[..., None]).add_(_anchors_grad(wr, u))
                gu.add_(g_own[..., None], alpha=1.0 / N)
            if ctx.channel_mean:
                gu.add_((g_s_hat[k] * (c[..., None] / C))[:, :, None, :])
        if ctx.cross:  # the anchors' gradient came from every chunk
            grad += (ga * (scale[:, None, None] / N))[..., None]
        return grad, None, None, g_against if ctx.external else None, None


def _matmul_into(out: Tensor, x: Tensor, y: Tensor) -> None:
    """``out = x @ y`` for ``[b, T, ., .]`` operands, ``out`` of any strides: one batched product when
    it is contiguous, else one per task (each task's ``[b, ., .]`` slice of a task-major ``out`` is
    contiguous), where a strided ``out=`` would cost a temporary and a copy."""
    if out.is_contiguous():
        torch.matmul(x, y, out=out)
        return
    for t in range(out.shape[1]):
        torch.bmm(x[:, t], y[:, t], out=out[:, t])


# A_b = [a_{b,1} … a_{b,T}] against every task's slice u_{b,t} of a chunk ``u`` ([b, T, C, N]), in
# one of two layouts: broadcasting the anchors over the tasks (a copy of b·T·T·C elements) or
# moving the tasks next to the positions (a copy of u, b·T·C·N); the smaller copy wins — the
# first with wide representations (N ≥ T, e.g. feature maps), the second with many tasks.


def _tasks_last(u: Tensor) -> Tensor:
    """``[b, T, C, N] -> [b, C, T·N]``: one product per sample then covers every task."""
    return u.transpose(1, 2).reshape(u.shape[0], u.shape[2], -1)


def _anchors_t(a: Tensor, u: Tensor) -> Tensor:
    """``A_bᵀ u_{b,t}`` for every sample and task: ``[b, T, T, N]``."""
    b, T, _, N = u.shape
    if T <= N:
        return torch.matmul(a[:, None], u)
    return torch.bmm(a, _tasks_last(u)).view(b, T, T, N).transpose(1, 2)


def _add_anchors_combined(out: Tensor, a: Tensor, w: Tensor) -> None:
    """``out[b, t] += A_b w_{b,t}`` for ``w`` ``[b, T, T, N]`` (``out`` contiguous ``[b, T, C, N]``)."""
    b, T, _, N = w.shape
    if T <= N:  # accumulate in place: a temporary the size of out costs as much as the product
        anchors = a.transpose(1, 2)[:, None].expand(b, T, -1, T).reshape(b * T, -1, T)
        out.view(b * T, -1, N).baddbmm_(anchors, w.reshape(b * T, T, N))
    else:
        out += torch.bmm(a.transpose(1, 2), _tasks_last(w)).view(b, -1, T, N).transpose(1, 2)


def _anchors_grad(w: Tensor, u: Tensor) -> Tensor:
    """``Σ_t w_{b,t} u_{b,t}ᵀ``: ``[b, T, C]``."""
    T, N = u.shape[1], u.shape[3]
    if T <= N:
        return torch.matmul(w, u.transpose(-1, -2)).sum(dim=1)
    return torch.bmm(_tasks_last(w), _tasks_last(u).transpose(1, 2))


@functools.lru_cache(maxsize=8)
def _packing(c: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(upper, weight, back, unpack)`` for symmetric ``c×c`` matrices flattened row-major: the
    flat indices of the upper triangle (diagonal included), ``√2`` off the diagonal and 1 on it,
    ``1/√2`` off the diagonal and 1 on it, and for every flat entry ``(i, j)`` the packed position
    of ``(min, max)``. Built once per shape (in ``dtype``, so float64 keeps its round-off); callers
    must not modify them."""
    # cached tensors must be ordinary ones even when first built under inference_mode: autograd
    # refuses to save inference tensors for backward, and later training steps reuse these
    with torch.inference_mode(False):
        i, j = torch.triu_indices(c, c, device=device)
        off = i != j
        weight = torch.ones(i.shape, dtype=dtype, device=device).masked_fill_(off, math.sqrt(2.0))
        back = torch.ones(i.shape, dtype=dtype, device=device).masked_fill_(off, math.sqrt(0.5))
        unpack = torch.empty(c * c, dtype=torch.long, device=device)
        pos = torch.arange(i.numel(), device=device)
        unpack[i * c + j] = pos
        unpack[j * c + i] = pos
        return i * c + j, weight, back, unpack


def _packed_grams(a: Tensor) -> Tensor:
    """``[B, C(C+1)/2]``: the upper triangles of the anchor Grams ``Â_b = A_bᵀA_b`` (``a`` is
    ``[B, T, C]``), off-diagonal entries times ``√2``, so that ``⟨Â_b, Â_k⟩_F`` is the plain dot
    product of two rows: the symmetric Grams' products at half the multiply-adds of their full
    flattenings."""
    return _anchor_grams(a)[1]


def _anchor_grams(a: Tensor) -> tuple[Tensor, Tensor]:
    """``(full, packed)``: the anchor Grams flattened (``[B, C²]``) and :func:`_packed_grams`' form."""
    upper, weight, _, _ = _packing(a.shape[2], a.device, a.dtype)
    full = torch.bmm(a.transpose(1, 2), a).flatten(1)
    return full, full.index_select(1, upper).mul_(weight)


class _OwnAnchorProducts(torch.autograd.Function):
    """``⟨Â_b, Â_k⟩_F`` of one set of anchors ``a`` (``[B, T, C]``) with itself, through the
    packed ``C×C`` Grams (:func:`_packed_grams`, ``V``, ``[B, C(C+1)/2]``): ``V Vᵀ``. The backward
    is two products, ``dV = (G + Gᵀ) V`` and ``dA_b = 2 A_b dÂ_b`` with ``dÂ_b`` the symmetric
    matrix whose two off-diagonal mirror entries each get ``dV/√2`` (they share one packed entry
    of weight ``√2``), where autograd would take one product per operand of each."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        packed = _packed_grams(a)
        ctx.save_for_backward(a, packed)
        return packed @ packed.T

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> Tensor:
        a, packed = ctx.saved_tensors
        B, c = a.shape[0], a.shape[2]
        _, _, back, unpack = _packing(c, a.device, a.dtype)
        d_hat = ((g + g.T) @ packed).mul_(back).index_select(1, unpack)
        out: Tensor = torch.bmm(a, d_hat.view(B, c, c)).mul_(2)
        return out


class _VectorAnchorCSA(torch.autograd.Function):
    """The whole CSA term for vector saliencies (``N = 1``) with anchor negatives on one process,
    when the anchor products go through the packed ``C×C`` Grams (many tasks): one autograd node
    with a written-out backward instead of about forty recorded operations, whose per-operation
    cost dominated at ``B×B``, ``B×T`` sizes (T = 10, B = C = 64). Same formula and options as
    :func:`csa_terms` (which falls back to the general path elsewhere); ``pos`` and ``neg`` are
    returned for logging, without gradient.

    With ``u_{b,t} = c_b s_{b,t}`` (``c`` the detached sample scale), ``K_b = U_b U_bᵀ`` (``T×T``)::

        d = diag(K) = ‖u_{b,t}‖² = ‖M_{b,t}‖     q_{b,t} = Σ_s K_b[s, t]²     aa = V Vᵀ  (V: packed anchor Grams)
        ‖Â_b‖ = √max(aa_bb, ε)   ‖M_{b,t}‖ = √max(d², ε) = max(d, √ε)
        pos = q / max(‖Â_b‖‖M_{b,t}‖, ε)      neg = aa / max(‖Â_b‖‖Â_k‖, ε)
        L = mean_(b,t) [ lse_b(t) − pos/τ ],  lse_b = log Σ_{k≠b} e^{neg_bk/τ}  (⊕ pos/τ with pid)

    and every ``max(·, ε)`` passes its gradient where its argument is at least ``ε``, as
    ``clamp_min`` does. Both norms are at least ``√ε``, a power of two, so the two denominators'
    ``max(·, ε)`` never bind and are left out (the values are identical). The code keeps the
    number of operations low: each costs microseconds of dispatch at these sizes, more than its
    arithmetic. The sample scale ``c`` is taken here. With ``tsr`` the node also
    returns TSR's value and per-task shares (:func:`~mtoframe_repmtl.tsr.entropy_forward` of
    ``ŝ = mean_C u``): both terms as one node, where a separate TSR node, its own reading of the
    saliency and the sum of the two gradients cost as much as TSR's arithmetic many times over."""

    @staticmethod
    def forward(
        ctx: Any, s: Tensor, tau: float, pid: bool, tsr: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        B = s.shape[0]
        eps = tiny(s)
        scale = sample_scale(s)
        u = s * scale.view(B, 1, 1)
        k = torch.bmm(u, u.transpose(1, 2))
        d = k.diagonal(dim1=1, dim2=2)  # ‖u_{b,t}‖² ≥ 0: a sum of squares
        q = k.square().sum(dim=1)
        grams, packed = _anchor_grams(u)  # the full ones are kept for the backward
        aa = packed @ packed.T
        aa_diag = aa.diagonal()
        a_norm = aa_diag.clamp_min(eps).sqrt()
        m_norm = d.clamp_min(math.sqrt(eps))
        a_col = a_norm.view(B, 1)
        den = a_col * m_norm
        pos = q / den
        nden = a_col * a_norm
        neg = aa / nden
        logits = (neg / tau).masked_fill_(_self_mask(B, B, 0, s.device), float("-inf"))
        lse = torch.logsumexp(logits, dim=1, keepdim=True)
        full = torch.logaddexp(lse, pos / tau) if pid else lse
        loss = torch.sub(full, pos, alpha=1.0 / tau).mean()
        if tsr:
            per_task, saved = entropy_forward(u.mean(dim=2, keepdim=True))
            entropy = per_task.sum()
        else:
            per_task, saved, entropy = u.new_empty(0), (), u.new_zeros(())
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(u, scale, k, grams, a_norm, m_norm, den, pos, nden, neg, logits, lse, full,
                              d >= math.sqrt(eps), aa_diag >= eps, *saved)
        ctx.tau, ctx.pid = tau, pid
        ctx.mark_non_differentiable(pos, neg, per_task)
        return loss, pos, neg, entropy, per_task

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g_loss: Tensor, _pos: Tensor, _neg: Tensor, g_entropy: Tensor, _per_task: Tensor
    ) -> tuple[Tensor, None, None, None]:
        (u, scale, k, grams, a_norm, m_norm, den, pos, nden, neg, logits, lse, full,
         d_ok, diag_ok, *saved) = ctx.saved_tensors
        tau = ctx.tau
        B, T, C = u.shape
        g = g_loss / (B * T)  # every (b, t) term weighs 1/(B·T)
        if ctx.pid:
            g_lse = g * torch.exp(lse - full).sum(dim=1, keepdim=True)
            g_pos = g / tau * torch.expm1(pos / tau - full)
        else:
            g_lse = g * T
            g_pos = -g / tau
        g_aa = torch.exp(logits - lse).mul_(g_lse / tau).div_(nden)  # softmax rows (0 at each own column)
        g_nden = g_aa * neg  # minus the gradient of nden = ‖Â_b‖‖Â_k‖
        g_q = g_pos / den
        g_den = g_q * pos  # minus the gradient of den = ‖Â_b‖‖M_{b,t}‖
        # (minus) ‖Â_b‖'s gradient, from both products it is in
        g_anorm = torch.addmv((g_den * m_norm).sum(dim=1), g_nden + g_nden.T, a_norm)
        g_aa.diagonal().sub_(g_anorm.div_(a_norm).mul_(diag_ok), alpha=0.5)  # ‖Â_b‖ = √aa_bb
        # aa_bk = ⟨Â_b, Â_k⟩ and Â_b = U_bᵀU_b: dÂ_b = Σ_k (g + gᵀ)_bk Â_k from the full Grams (one
        # product, where unpacking the packed one's gradient cost more than the multiply-adds it saves);
        # dU_b = 2 U_b dÂ_b, the 2 applied at the end
        g_u = torch.bmm(u, ((g_aa + g_aa.T) @ grams).view(B, C, C))
        # q_t = Σ_s K[s, t]² and ‖M‖ = max(d, √ε) with d = diag(K), K = U Uᵀ: dU = (G + Gᵀ) U with
        # G = 2 K diag(g_q) + diag(g_d); halved, as above
        h = k * g_q.view(B, 1, T)
        h = h + h.transpose(1, 2)
        h.diagonal(dim1=1, dim2=2).sub_((g_den * a_norm.view(B, 1)).mul_(d_ok))
        g_u.baddbmm_(h, u)
        if saved:  # ŝ = mean_C u: every channel gets 1/C of its gradient (halved, as above)
            g_u.add_(entropy_backward(tuple(saved), g_entropy), alpha=0.5 / C)
        return g_u.mul_(scale.view(B, 1, 1)).mul_(2), None, None, None


def _vector_grams(s: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:class:`_SaliencyGrams`' ``(m, a, q)`` (own anchors) for vector saliencies (``N = 1``), by
    autograd: the anchors are then the scaled saliencies themselves (``a_{b,t} = u_{b,t}``), so
    with ``K_b = A_bᵀ A_b`` (``T×T``), ``q[b, t] = Σ_s K_b[s, t]²`` and ``m[b, t] = K_b[t, t]²``;
    one ``B×T×T`` product instead of the chunked ``C``-sized Grams."""
    a = s[..., 0] * scale[:, None, None]
    k = torch.bmm(a, a.transpose(1, 2))
    return k.diagonal(dim1=1, dim2=2).square(), a, k.square().sum(dim=1)


#: element-wise passes over the ``B×B'×T×T`` temporary of the ``T×T`` form (square, sum and their
#: backward, memory-bound where the products run at matrix-multiply speed), counted in
#: multiply-adds per element; measured on one CPU thread (B = C = 64, forward and backward: T×T
#: form 0.48 / 0.93 / 1.5 / 2.9 ms at T = 3 / 5 / 7 / 10, packed C×C form 0.77 / 0.76 / 0.81 /
#: 0.84 ms; the rule below picks the faster at each)
_TEMPORARY_COST = 80


def _through_channel_grams(B: int, Bq: int, T: int, C: int, *, own: bool) -> bool:
    """Whether :func:`_anchor_products` takes the packed ``C×C`` form (see there)."""
    grams_held = (B + (0 if own else Bq)) * C * C
    by_tasks = B * Bq * T * T * (C + _TEMPORARY_COST)
    by_channels = grams_held * T + B * Bq * C * (C + 1) // 2
    return by_channels < by_tasks and grams_held <= max(B * Bq * T * T, _CHUNK_ELEMENTS)


def _anchor_products(a: Tensor, a_all: Tensor) -> Tensor:
    """``[B, B']``: ``⟨Â_b, Â_k⟩_F`` of this call's anchors ``a`` (``[B, T, C]``) against ``a_all``
    (``[B', T, C]``).

    Two exact forms: ``‖A_bᵀ A_k‖²_F`` through ``T×T`` products (``B·B'·T²·C`` multiply-adds and
    a ``B×B'×T×T`` temporary), or the ``C×C`` anchor Grams ``Â`` and one product of their packed
    upper triangles (``(B + B')·T·C² + B·B'·C(C+1)/2``, with ``(B + B')·C²`` elements held). The second is
    far cheaper with many tasks (``T² ≫ C``); it is taken when it costs less and its Grams are no
    larger than the first form's temporary or the chunk work space (``_CHUNK_ELEMENTS``), so a
    wide representation (large ``C``) never holds ``C×C`` matrices beyond that budget.
    """
    (B, T, C), Bq = a.shape, a_all.shape[0]
    if _through_channel_grams(B, Bq, T, C, own=a_all is a):
        if a_all is a:
            return _OwnAnchorProducts.apply(a)  # type: ignore[no-any-return, no-untyped-call]
        return _packed_grams(a) @ _packed_grams(a_all).T
    return torch.einsum("btc,ksc->bkts", a, a_all).square().sum(dim=(-1, -2))


def csa_terms(
    saliency: Tensor,
    tau: float = DEFAULT_TAU,
    *,
    negatives: str = "anchor",
    positive_in_denominator: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_csa, cos_pos [B, T], cos_neg [B, T, N·B])`` with ``N`` ranks (1 outside
    torch.distributed); ``cos_neg[b, t, rank·B + b]`` is not a negative (it is masked out of the
    loss; :func:`negative_mask` marks the rest)."""
    loss, pos, neg, _ = _terms(saliency, tau, negatives, positive_in_denominator, tsr=False)
    return loss, pos, neg


def csa_and_tsr(
    saliency: Tensor,
    tau: float = DEFAULT_TAU,
    *,
    negatives: str = "anchor",
    positive_in_denominator: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(L_csa, cos_pos, cos_neg, L_tsr, tsr_per_task)``: :func:`csa_terms` and
    :func:`~mtoframe_repmtl.tsr.tsr_terms` of one saliency, equal to calling both, but reading it
    once. TSR's input ``ŝ = c · mean_C S`` is taken where CSA has each slice of the saliency in
    hand, so the saliency has a single gradient node (a second reader costs autograd a
    saliency-sized sum of two gradients); for vector
    saliencies with many tasks both terms and the sample scale are one node
    (:class:`_VectorAnchorCSA`)."""
    loss, pos, neg, entropy = _terms(saliency, tau, negatives, positive_in_denominator, tsr=True)
    assert entropy is not None
    return loss, pos, neg, *entropy


def _terms(
    saliency: Tensor, tau: float, negatives: str, positive_in_denominator: bool, *, tsr: bool
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise OptionError(f"csa_loss: tau must be a positive number, got {tau!r}")
    if negatives not in NEGATIVES:
        raise OptionError(f"csa_loss: negatives must be one of {', '.join(map(repr, NEGATIVES))}; got {negatives!r}")
    with full_precision(saliency):
        s = as_btcn(saliency, "csa_loss")
        B, T = s.shape[:2]
        if B * world_size() < 2:
            raise BatchError(
                f"csa_loss needs at least 2 samples per batch (its negatives are the other samples), got B={B}; "
                "use batches of 2 or more (e.g. DataLoader(drop_last=True)) or use_csa=False"
            )
        if (s.shape[-1] == 1 and negatives == "anchor" and world_size() == 1
                and _through_channel_grams(B, B, T, s.shape[2], own=True)):
            # a [B, T, C] saliency goes in as it is: the view s[..., 0] of the view s would cost its
            # backward two more nodes, one of them filling a saliency-sized zero gradient
            vector = saliency if saliency.dim() == 3 and saliency.dtype == s.dtype else s[..., 0]
            loss, pos, neg_b, entropy, per_task = _VectorAnchorCSA.apply(  # type: ignore[no-untyped-call]
                vector, tau, positive_in_denominator, tsr)
            return loss, pos, neg_b[:, None, :].expand(B, T, B), (entropy, per_task) if tsr else None
        scale = sample_scale(s)
        cross = negatives == "task" and world_size() == 1
        if s.shape[-1] == 1 and not cross:
            m, a, q = _vector_grams(s, scale)
            s_hat = a.mean(dim=2, keepdim=True) if tsr else None
        else:
            m, a, q, s_hat = _SaliencyGrams.apply(s, scale, cross, None, tsr)  # type: ignore[no-untyped-call]
        loss, pos, neg = _contrast(s, scale, m, a, q, tau, negatives, positive_in_denominator)
        return loss, pos, neg, channel_mean_entropy(s_hat) if s_hat is not None and tsr else None


def _contrast(
    s: Tensor, scale: Tensor, m: Tensor, a: Tensor, q: Tensor, tau: float, negatives: str, pid: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """CSA's cosines and loss from :class:`_SaliencyGrams`' ``(m, a, q)``."""
    B, T = s.shape[:2]
    eps = tiny(s)
    offset = rank() * B  # this rank's rows in the gathered (global) batch
    local = slice(offset, offset + B)
    a_all = all_gather_cat(a)  # [N·B, T, C]
    aa = _anchor_products(a, a_all)  # [B, N·B] = ⟨Â_b, Â_k⟩
    a_norm = aa[:, local].diagonal().clamp_min(eps).sqrt()  # ‖Â_b‖
    if negatives == "anchor":
        m_norm = m.clamp_min(eps).sqrt()  # ‖M_{b,t}‖
        pos = q / (a_norm[:, None] * m_norm).clamp_min(eps)
        a_norm_all = all_gather_cat(a_norm)
        neg_b = aa / (a_norm[:, None] * a_norm_all[None, :]).clamp_min(eps)
        # the negatives do not depend on the task: one log-sum-exp per sample, not per (b, t)
        own = _self_mask(B, neg_b.shape[1], rank(), neg_b.device)
        lse = torch.logsumexp((neg_b / tau).masked_fill(own, float("-inf")), dim=-1)[:, None]
        if pid:
            lse = torch.logaddexp(lse, pos / tau)
        return (lse - pos / tau).mean(), pos, neg_b[:, None, :].expand(B, T, aa.shape[1])
    if world_size() > 1:
        # every rank's anchors against this rank's task Grams, then every rank's columns
        m, _, q, _ = _SaliencyGrams.apply(s, scale, True, a_all)  # type: ignore[no-untyped-call]
        q = all_gather_cat(q, dim=2)[local]
    m_norm_all = all_gather_cat(m.clamp_min(eps).sqrt())  # ‖M_{k,t}‖, [N·B, T]
    neg = q / (a_norm[:, None, None] * m_norm_all.T[None, :, :]).clamp_min(eps)
    pos = torch.diagonal(neg[:, :, local], dim1=0, dim2=2).T
    own = _self_mask(B, neg.shape[-1], rank(), neg.device)
    logits = (neg / tau).masked_fill(own[:, None, :], float("-inf"))
    if pid:
        logits = torch.cat([(pos / tau)[..., None], logits], dim=-1)
    return (torch.logsumexp(logits, dim=-1) - pos / tau).mean(), pos, neg


def negative_mask(neg: Tensor) -> Tensor:
    """``[B, N·B]`` boolean: which columns of ``cos_neg`` (from :func:`csa_terms`) are negatives of
    row ``b`` (all but this rank's own sample, at ``rank·B + b``)."""
    return ~_self_mask(neg.shape[0], neg.shape[-1], rank(), neg.device)


@functools.lru_cache(maxsize=8)
def _self_mask(B: int, total: int, rank_: int, device: torch.device) -> Tensor:
    """``[B, total]`` boolean, True at each row's own sample (``rank·B + b``); built once per shape
    (four small kernels a step otherwise). Callers must not modify it."""
    with torch.inference_mode(False):  # as in _packing: an ordinary tensor, reused by training steps
        mask = torch.zeros(B, total, dtype=torch.bool, device=device)
        idx = torch.arange(B, device=device)
        mask[idx, rank_ * B + idx] = True
    return mask


def csa_loss(
    saliency: Tensor,
    tau: float = DEFAULT_TAU,
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
