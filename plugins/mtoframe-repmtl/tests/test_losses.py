"""The pure saliency losses: closed forms, invariances, and the Gram form against a dense C×C loop."""

from __future__ import annotations

import math

import mtoframe_repmtl.csa as csa_mod
import pytest
import torch
import torch.nn.functional as F
from mtoframe_repmtl import csa_loss, csa_terms, tsr_loss, tsr_terms

from mtoframe.errors import BatchError, MtoError, OptionError

OPTIONS = [
    {"negatives": "anchor", "positive_in_denominator": False},
    {"negatives": "anchor", "positive_in_denominator": True},
    {"negatives": "task", "positive_in_denominator": False},
    {"negatives": "task", "positive_in_denominator": True},
]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def dense_csa(s: torch.Tensor, tau: float, negatives: str, positive_in_denominator: bool) -> torch.Tensor:
    """The paper's formula written literally: C×C matrices, flattened and normalised, loops."""
    B, T, C = s.shape[:3]
    s = s.reshape(B, T, C, -1)
    z_task = [[F.normalize((s[b, t] @ s[b, t].T).flatten(), dim=0) for t in range(T)] for b in range(B)]
    z_anchor = []
    for b in range(B):
        a = s[b].mean(dim=-1).T  # C×T
        z_anchor.append(F.normalize((a @ a.T).flatten(), dim=0))
    terms = []
    for b in range(B):
        for t in range(T):
            pos = z_anchor[b] @ z_task[b][t] / tau
            if negatives == "anchor":
                negs = [z_anchor[b] @ z_anchor[k] / tau for k in range(B) if k != b]
            else:
                negs = [z_anchor[b] @ z_task[k][t] / tau for k in range(B) if k != b]
            denom = ([pos] if positive_in_denominator else []) + negs
            terms.append(-pos + torch.logsumexp(torch.stack(denom), dim=0))
    return torch.stack(terms).mean()


# -- TSR ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [2, 3, 5])
def test_tsr_is_log_t_for_equal_magnitudes(T: int) -> None:
    # Same channel profile for every task up to a per-position sign: all |Ŝ_t| equal.
    base = rand(4, 1, 6, 3, 2)
    signs = torch.where(rand(4, T, 1, 3, 2, seed=1) > 0, 1.0, -1.0).to(torch.float64)
    assert tsr_loss(base * signs).item() == pytest.approx(math.log(T), abs=1e-12)


def test_tsr_is_zero_when_one_task_holds_all_saliency() -> None:
    s = torch.zeros(3, 3, 4, 2, 2, dtype=torch.float64)
    s[:, 1] = rand(3, 4, 2, 2)
    s.requires_grad_(True)
    loss = tsr_loss(s)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-15)
    assert torch.isfinite(s.grad).all()


def test_tsr_range_and_per_task_shares() -> None:
    s = rand(5, 4, 3, 2, 3)
    loss, per_task = tsr_terms(s)
    assert 0.0 < loss.item() < math.log(4)
    assert per_task.shape == (4,)
    torch.testing.assert_close(per_task.sum(), loss)


@pytest.mark.parametrize("c", [1e-12, 1e-3, 7.0, 1e9])
def test_tsr_invariant_to_common_rescale(c: float) -> None:
    s = rand(3, 3, 4, 2, 2).requires_grad_(True)
    scaled = (s.detach() * c).requires_grad_(True)
    a, b = tsr_loss(s), tsr_loss(scaled)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    a.backward()
    b.backward()
    # degree-0 homogeneous: ∇f(cS) = ∇f(S)/c
    torch.testing.assert_close(scaled.grad * c, s.grad, rtol=1e-10, atol=1e-14)


def test_tsr_invariant_to_batch_permutation() -> None:
    s = rand(6, 3, 4, 2, 2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(tsr_loss(s[perm]), tsr_loss(s), rtol=1e-13, atol=0)


def test_tsr_gradcheck() -> None:
    s = rand(2, 3, 3, 2, 2).requires_grad_(True)
    assert torch.autograd.gradcheck(tsr_loss, (s,))


# -- CSA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize(
    "shape",
    # C<N, vector (N=1), C<<N, wide (C ≫ T: anchor products through T×T products), many tasks
    # (T² ≫ C: through C×C Grams)
    [(4, 3, 5, 2, 3), (3, 2, 6), (3, 3, 2, 4, 4), (3, 2, 24, 2, 1), (4, 9, 3), (3, 8, 2, 2, 1)],
)
def test_csa_gram_form_equals_dense(opts: dict, shape: tuple[int, ...]) -> None:
    s1 = rand(*shape).requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    fast = csa_loss(s1, 0.3, **opts)
    dense = dense_csa(s2, 0.3, **opts)
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-6)
    fast.backward()
    dense.backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=0, atol=1e-6)
    # and in fact to float64 round-off
    assert (s1.grad - s2.grad).abs().max() < 1e-10


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize(
    "shape",
    # C<N, vector through T×T products, vector through the one-node form (anchor negatives),
    # C≪N, C>N
    [(4, 3, 5, 2, 3), (3, 2, 6), (4, 9, 3), (3, 3, 2, 4, 4), (3, 2, 24, 2, 1)],
)
def test_csa_and_tsr_in_one_reading_equal_the_two_terms(opts: dict, shape: tuple[int, ...]) -> None:
    # Rep-MTL's combined path (TSR from CSA's reading of the saliency, or one node for vector
    # saliencies): values, per-task shares and the gradient of CSA + λ·TSR equal the two public terms'
    s1 = rand(*shape, seed=5).requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    csa, pos, neg, tsr, per_task = csa_mod.csa_and_tsr(s1, 0.3, **opts)
    (csa + 0.7 * tsr).backward()
    csa_ref, pos_ref, neg_ref = csa_terms(s2, 0.3, **opts)
    tsr_ref, per_task_ref = tsr_terms(s2)
    (csa_ref + 0.7 * tsr_ref).backward()
    for got, want in ((csa, csa_ref), (tsr, tsr_ref), (per_task, per_task_ref), (pos, pos_ref), (neg, neg_ref)):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    assert (s1.grad - s2.grad).abs().max() < 1e-10 * s2.grad.abs().max()


@pytest.mark.parametrize("term", ["csa", "tsr"])
@pytest.mark.parametrize("shape", [(4, 9, 3), (3, 3, 2, 4, 4)])  # the one-node form, the conv path
def test_csa_and_tsr_with_one_term_used_equal_that_term(term: str, shape: tuple[int, ...]) -> None:
    # a backward through only one of the two outputs (the other's gradient is not made at all)
    s1 = rand(*shape, seed=7).requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    csa, _, _, tsr, _ = csa_mod.csa_and_tsr(s1, 0.3)
    (csa if term == "csa" else tsr).backward()
    (csa_terms(s2, 0.3)[0] if term == "csa" else tsr_terms(s2)[0]).backward()
    assert (s1.grad - s2.grad).abs().max() < 1e-10 * s2.grad.abs().max()


@pytest.mark.parametrize("shape", [(3, 2, 3, 2, 2), (3, 8, 2), (3, 2, 4)])
def test_combined_terms_gradcheck(shape: tuple[int, ...]) -> None:
    def both(x: torch.Tensor) -> torch.Tensor:
        csa, _, _, tsr, _ = csa_mod.csa_and_tsr(x, 0.5)
        return csa + tsr

    assert torch.autograd.gradcheck(both, (rand(*shape, seed=6).requires_grad_(True),))


def test_cross_grams_against_external_anchors_equal_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # the distributed path passes the (gathered) anchors in; given this sample set's own anchors
    # built with autograd, values and the saliency gradient must equal the built-in path's
    from mtoframe_repmtl._layout import sample_scale

    w = rand(5, 3, 5, seed=2)
    for chunk in (csa_mod._CHUNK_ELEMENTS, 1):  # kept Grams, and recomputed one sample at a time
        monkeypatch.setattr(csa_mod, "_CHUNK_ELEMENTS", chunk)
        s1 = rand(5, 3, 4, 6).requires_grad_(True)
        s2 = s1.detach().clone().requires_grad_(True)
        c = sample_scale(s1)
        m1, _, q1, _ = csa_mod._SaliencyGrams.apply(s1, c, True)
        anchors = s2.mean(dim=-1) * c[:, None, None]
        m2, _, q2, _ = csa_mod._SaliencyGrams.apply(s2, c, True, anchors)
        torch.testing.assert_close(q2, q1, rtol=1e-13, atol=0)
        ((q1 * w).sum() + m1.sum()).backward()
        ((q2 * w).sum() + m2.sum()).backward()
        torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize(
    ("shape", "form"),
    [((4, 2, 40), "tasks"), ((3, 3, 30), "tasks"), ((4, 9, 3), "channels"), ((2, 40, 6), "channels"),
     ((64, 10, 64), "channels"), ((64, 5, 64), "channels"), ((64, 3, 64), "tasks")],
)
def test_anchor_products_equal_the_dense_frobenius_products(shape, form, monkeypatch) -> None:
    # both forms (T×T products for few tasks, C×C Grams for many) against ⟨A_b A_bᵀ, A_k A_kᵀ⟩_F
    a, other = rand(*shape, seed=3), rand(shape[0] + 1, *shape[1:], seed=4)
    calls = []
    einsum = torch.einsum
    for against in (a, other):
        hat = einsum("btc,btd->bcd", a, a).flatten(1)
        hat_k = einsum("btc,btd->bcd", against, against).flatten(1)
        monkeypatch.setattr(torch, "einsum", lambda *args: calls.append(1) or einsum(*args))
        got = csa_mod._anchor_products(a, against)
        monkeypatch.setattr(torch, "einsum", einsum)
        torch.testing.assert_close(got, hat @ hat_k.T, rtol=1e-12, atol=0)
    assert bool(calls) == (form == "tasks")  # the T×T form is the einsum


def test_shape_caches_built_under_inference_mode_still_train() -> None:
    # the per-shape caches (packing indices, self mask) are first filled by an inference_mode call
    # (e.g. an evaluation loop computing the loss); a later training step must still backward
    csa_mod._packing.cache_clear()
    csa_mod._self_mask.cache_clear()
    s = rand(64, 10, 64)  # the C×C (packed) form
    with torch.inference_mode():
        csa_loss(s)
    ref = s.clone().requires_grad_(True)
    csa_loss(ref).backward()
    assert ref.grad is not None and torch.isfinite(ref.grad).all()


def test_negative_mask_excludes_self_only() -> None:
    _, _, neg = csa_terms(rand(4, 2, 3, 2, 2))
    assert torch.equal(csa_mod.negative_mask(neg), ~torch.eye(4, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(5, 3, 6, 2, 2), (5, 3, 3, 2, 2)])  # C > N and C ≤ N (one C×C product)
def test_csa_chunked_gram_norm_equals_one_shot(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...]) -> None:
    s = rand(*shape)
    ref = s.clone().requires_grad_(True)
    one_shot = csa_loss(ref)
    one_shot.backward()
    monkeypatch.setattr(csa_mod, "_CHUNK_ELEMENTS", 1)  # one sample per chunk
    chunked_in = s.clone().requires_grad_(True)
    chunked = csa_loss(chunked_in)
    chunked.backward()
    torch.testing.assert_close(chunked, one_shot, rtol=1e-13, atol=0)
    torch.testing.assert_close(chunked_in.grad, ref.grad, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("knob", ["_SLICE_ELEMENTS", "_CHUNK_ELEMENTS"])  # Grams kept / recomputed per sample
@pytest.mark.parametrize("shape", [(5, 3, 3, 2, 2), (5, 3, 6, 2, 2)])  # C ≤ N and C > N
def test_csa_and_tsr_one_sample_per_chunk_equal_one_shot(monkeypatch, knob: str, shape: tuple[int, ...]) -> None:
    # both terms from one reading, the batch in one chunk against one sample per chunk: with the
    # Grams kept (the factors formed for the whole batch, then one product per chunk) or recomputed
    x = rand(*shape, seed=9)
    results = []
    for limit in (None, 1):
        if limit is not None:
            monkeypatch.setattr(csa_mod, knob, limit)
        s = x.clone().requires_grad_(True)
        for opts in OPTIONS[:2]:
            csa, _, _, tsr, _ = csa_mod.csa_and_tsr(s, 0.3, **opts)
            (csa + 0.7 * tsr).backward()
            results.append((csa.detach(), tsr.detach()))
        results.append(s.grad)
    half = len(results) // 2
    for got, want in zip(results[half:], results[:half]):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("shape", [(5, 3, 3, 2, 2), (5, 3, 6, 2, 2)])  # C ≤ N (own-anchor product), C > N
@pytest.mark.parametrize("chunk", [None, 1])
def test_task_major_saliency_gets_its_gradient_in_its_own_layout(monkeypatch, shape, chunk) -> None:
    # the trainer's saliency is [T, B, ...] underneath; the gradient (both terms, one node) must
    # equal the contiguous input's, and on the C ≤ N path come back task-major, so that each
    # task's slice is contiguous for the heads' double backward
    if chunk is not None:
        monkeypatch.setattr(csa_mod, "_CHUNK_ELEMENTS", chunk)
    x = rand(*shape, seed=8)
    flat = x.clone().requires_grad_(True)
    tb = x.transpose(0, 1).contiguous().requires_grad_(True)
    for opts in OPTIONS[:2]:
        view = tb.transpose(0, 1)
        csa, _, _, tsr, _ = csa_mod.csa_and_tsr(view, 0.3, **opts)
        (g_view,) = torch.autograd.grad(csa + 0.7 * tsr, view)
        csa_f, _, _, tsr_f, _ = csa_mod.csa_and_tsr(flat, 0.3, **opts)
        (g_flat,) = torch.autograd.grad(csa_f + 0.7 * tsr_f, flat)
        torch.testing.assert_close(g_view, g_flat, rtol=1e-11, atol=1e-14)
        assert g_view.transpose(0, 1).is_contiguous() == (shape[2] <= shape[3] * shape[4])


@pytest.mark.parametrize("opts", OPTIONS)
def test_csa_invariant_to_batch_permutation(opts: dict) -> None:
    s = rand(5, 3, 4, 2, 2)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(csa_loss(s[perm], **opts), csa_loss(s, **opts), rtol=1e-12, atol=0)


def test_csa_invariant_to_per_sample_rescale() -> None:
    # every cosine is a ratio of Grams of one sample: a positive factor per sample cancels
    s = rand(4, 3, 4, 3, 2)
    c = torch.tensor([1e-9, 3.0, 1e4, 0.5], dtype=torch.float64)[:, None, None, None, None]
    for opts in OPTIONS:
        torch.testing.assert_close(csa_loss(s * c, **opts), csa_loss(s, **opts), rtol=1e-12, atol=0)


def test_csa_cosines_are_cosines() -> None:
    s = rand(4, 3, 5, 2, 2)
    _, pos, neg = csa_terms(s, negatives="task")
    assert pos.shape == (4, 3) and neg.shape == (4, 3, 4)
    assert (pos >= 0).all() and (pos <= 1 + 1e-12).all()  # Frobenius products of PSD matrices
    # anchor against its own sample's task Gram is the positive
    torch.testing.assert_close(torch.diagonal(neg, dim1=0, dim2=2).T, pos)


def test_csa_tiny_float32_saliency_does_not_underflow() -> None:
    # batch-mean losses on large maps give saliencies ~1e-9: fourth powers underflow float32
    s = rand(3, 3, 8, 4, 4)
    ref = csa_loss(s)
    small = (s * 1e-12).float().requires_grad_(True)
    loss = csa_loss(small)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert torch.isfinite(small.grad).all() and small.grad.abs().max() > 0


def test_half_saliency_is_computed_in_float32() -> None:
    s = rand(3, 2, 4, 2, 2).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c, t = csa_loss(s), tsr_loss(s)
    assert c.dtype == torch.float32 and t.dtype == torch.float32
    torch.testing.assert_close(c, csa_loss(s.float()))
    torch.testing.assert_close(t, tsr_loss(s.float()))


def test_csa_zero_task_saliency_stays_finite() -> None:
    s = rand(3, 3, 4, 2, 2)
    s[:, 2] = 0.0
    s.requires_grad_(True)
    loss = csa_loss(s)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("opts", OPTIONS)
def test_csa_gradcheck(opts: dict) -> None:
    s = rand(3, 2, 3, 2, 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: csa_loss(x, 0.5, **opts), (s,))


@pytest.mark.parametrize("pid", [False, True])
def test_vector_anchor_csa_node_gradcheck_and_zero_sample(pid: bool) -> None:
    # T² ≫ C: vector saliencies with anchor negatives take the one-node form (_VectorAnchorCSA)
    s = rand(3, 8, 2)
    assert csa_mod._through_channel_grams(3, 3, 8, 2, own=True)
    assert torch.autograd.gradcheck(lambda x: csa_loss(x, 0.5, positive_in_denominator=pid), (s.requires_grad_(True),))
    z = rand(4, 9, 3)
    z[1] = 0.0  # every clamp active for one sample
    z.requires_grad_(True)
    loss = csa_loss(z, 0.3, positive_in_denominator=pid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    ref_in = z.detach().clone().requires_grad_(True)
    ref = dense_csa(ref_in, 0.3, "anchor", pid)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(z.grad, ref_in.grad, rtol=0, atol=1e-10)


def test_vector_node_takes_a_vector_saliency_in_any_layout() -> None:
    # [B, T, C] goes into the one-node form as it is; [B, T, C, 1, 1] and half precision through
    # the [B, T, C, 1] view: the same values and saliency gradient
    base = rand(9, 4, 3, seed=3)  # task-major underneath, as the trainer hands it over
    assert csa_mod._through_channel_grams(4, 4, 9, 3, own=True)

    def run(make):
        leaf = base.clone().requires_grad_(True)
        csa, pos, neg, tsr, per_task = csa_mod.csa_and_tsr(make(leaf), 0.3)
        (csa + 0.7 * tsr).backward()
        return (csa, tsr, per_task, pos, neg), leaf.grad

    ref, ref_grad = run(lambda x: x.transpose(0, 1))
    got, grad = run(lambda x: x.transpose(0, 1)[..., None, None])
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    half = base.half().float()  # the values a half saliency holds, in float32 (the terms' precision)
    ref32 = csa_mod.csa_and_tsr(half.transpose(0, 1).clone(), 0.3)
    got16 = csa_mod.csa_and_tsr(half.half().transpose(0, 1), 0.3)
    for a, b in zip(got16, ref32, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(4, 3, 5, 2, 3), (3, 10, 6)])
def test_tsr_node_gradcheck(shape: tuple[int, ...]) -> None:
    s = rand(*shape).requires_grad_(True)
    assert torch.autograd.gradcheck(tsr_loss, (s,))


def test_csa_needs_two_samples() -> None:
    with pytest.raises(BatchError, match=r"at least 2 samples.*B=1"):
        csa_loss(rand(1, 3, 4, 2, 2))


def test_bad_arguments_are_named() -> None:
    s = rand(2, 2, 3, 2, 2)
    with pytest.raises(OptionError, match="tau"):
        csa_loss(s, tau=0.0)
    with pytest.raises(OptionError, match=r"negatives.*'anchor', 'task'"):
        csa_loss(s, negatives="pairs")
    with pytest.raises(MtoError, match=r"\[B, T, C, H, W\]"):
        tsr_loss(rand(2, 3))
