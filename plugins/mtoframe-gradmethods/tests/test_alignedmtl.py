from __future__ import annotations

import pytest
import torch
from mtoframe_gradmethods.alignedmtl import aligned_weights

import mtoframe
from mtoframe.testing.factories import gradient_families

CASES = list(gradient_families())

FULL = [c for c in CASES if c.name.startswith(("random", "conflicting"))]


@pytest.mark.parametrize("case", FULL, ids=lambda c: c.name)
def test_aligned_system_is_orthogonal_with_equal_norms(case):
    g = case.grads
    K = g @ g.T
    lam, V = torch.linalg.eigh(K)
    B = lam.min().sqrt() * (V * lam.rsqrt()) @ V.T
    A = B @ g
    assert torch.allclose(A @ A.T, lam.min() * torch.eye(g.shape[0]), atol=1e-9 * float(lam.max()))
    assert torch.allclose(mtoframe.aggregate("alignedmtl", g), A.sum(0), atol=1e-9 * float(g.norm()))


def test_scales():
    g = CASES[0].grads
    lam = torch.linalg.eigvalsh(g @ g.T)
    base = aligned_weights(g @ g.T, "min") / lam.min().sqrt()
    assert torch.allclose(aligned_weights(g @ g.T, "median"), base * lam.sort().values[0].sqrt())  # T=2: lower median = min
    assert torch.allclose(aligned_weights(g @ g.T, "rmse"), base * lam.mean().sqrt())


def test_rank_deficient_uses_nonzero_spectrum():
    g = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    K = g @ g.T
    lam, V = torch.linalg.eigh(K)
    lam, V = lam[1:], V[:, 1:]  # rank 2
    B = lam.min().sqrt() * (V * lam.rsqrt()) @ V.T
    assert torch.allclose(mtoframe.aggregate("alignedmtl", g), B.sum(0) @ g, atol=1e-12)


def reference_update(g: torch.Tensor, eps: float) -> torch.Tensor:
    """The official code's / LibMTL's step, from the paper's formula in float64: eigenvalues of
    GGᵀ above λ_max·T·eps, B = √λ_min(kept) · V Λ^(-1/2) Vᵀ on them, update 1ᵀB G."""
    g = g.to(torch.float64)
    lam, V = torch.linalg.eigh(g @ g.T)
    keep = lam > lam.max() * g.shape[0] * eps
    lam, V = lam[keep], V[:, keep]
    B = lam.min().sqrt() * V @ torch.diag(lam.rsqrt()) @ V.T
    return B.sum(0) @ g


def near_collinear(delta: float, T: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 30, generator=gen, dtype=torch.float64)
    return base + delta * torch.randn(T, 30, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("delta", [1e-2, 1e-4, 1e-5, 3e-6, 1e-7])
def test_default_cutoff_equals_the_references_on_near_collinear_gradients(delta):
    g = near_collinear(delta)
    expected = reference_update(g, torch.finfo(torch.float32).eps)
    torch.testing.assert_close(mtoframe.aggregate("alignedmtl", g), expected, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(mtoframe.aggregate("alignedmtl", g.float()), expected.float(), rtol=1e-4, atol=1e-4)


def test_float32_cutoff_keeps_the_update_at_the_dominant_scale():
    # eigenvalue ratio ~1e-10: the references cut it, the float64 cut-off keeps it and σ = √λ_min
    # shrinks the update by about five orders of magnitude
    g = near_collinear(1e-5, T=2)
    lam = torch.linalg.eigvalsh(g @ g.T)
    assert 1e-12 < float(lam[0] / lam[-1]) < 1e-8
    ref = mtoframe.aggregate("alignedmtl", g)
    f64 = mtoframe.aggregate(mtoframe.create("alignedmtl", rank_cutoff="float64"), g)
    torch.testing.assert_close(f64, reference_update(g, torch.finfo(torch.float64).eps), rtol=1e-6, atol=1e-12)
    assert float(ref.norm()) > 1e4 * float(f64.norm())
    assert float(ref.norm()) == pytest.approx(float(g.mean(0).norm() * 2), rel=1e-3)


def test_a_huge_row_gives_the_reference_update_not_zero():
    g = near_collinear(1.0, T=3).float()
    g[0] *= 1e30  # its Gram entry overflows float32
    d = mtoframe.aggregate("alignedmtl", g)
    expected = reference_update(g.double(), torch.finfo(torch.float32).eps)
    assert torch.isfinite(d).all() and float(d.norm()) > 0
    torch.testing.assert_close(d.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_an_overflowed_gram_matrix_gives_nan_weights_not_zeros():
    K = torch.tensor([[torch.inf, 1.0], [1.0, 2.0]], dtype=torch.float64)
    assert torch.isnan(aligned_weights(K)).all()


def test_matches_torchjd_on_near_collinear_gradients():
    torchjd = pytest.importorskip("torchjd.aggregation")
    g = near_collinear(1e-5, T=3).float()
    ours = mtoframe.aggregate(mtoframe.create("alignedmtl", reduction="mean"), g)
    torch.testing.assert_close(ours, torchjd.AlignedMTL()(g), rtol=1e-3, atol=1e-4)


def test_in_a_trainer_an_overflowed_gram_matrix_is_caught_not_a_zero_step():
    """float32 rows 1e30 apart overflow ctx.gram(): the update is NaN, so the trainer's nonfinite
    policy names the step instead of silently applying a zero update."""
    from mtoframe import Method, Role, hookimpl
    from mtoframe.errors import NonFiniteLossError
    from mtoframe.testing.factories import make_batch, make_trainer, make_vector_model

    class Huge(Method):
        name = "hugeweight"
        roles = Role.LOSS

        @hookimpl
        def on_task_losses(self, ctx):
            ctx.weights = ctx.weights * torch.tensor([1e30, 1.0, 1.0], dtype=ctx.weights.dtype)

    model = make_vector_model(dtype=torch.float32)
    trainer = make_trainer([Huge(), "alignedmtl"], model=model)
    with pytest.raises(NonFiniteLossError, match="non-finite update"):
        trainer.step(make_batch(model))
