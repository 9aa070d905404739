from __future__ import annotations

import pytest
import torch
from mtoframe_gradmethods.imtlg import imtlg_weights

import mtoframe
from mtoframe.testing.factories import gradient_families

CASES = list(gradient_families())

FULL = [c for c in CASES if c.name.startswith(("random", "conflicting", "scale"))]


@pytest.mark.parametrize("case", FULL, ids=lambda c: c.name)
def test_equal_projections_on_unit_gradients(case):
    g = case.grads
    d = mtoframe.aggregate("imtlg", g)
    proj = (g / g.norm(dim=1, keepdim=True)) @ d
    assert torch.allclose(proj, proj.mean().expand_as(proj), rtol=1e-8, atol=0)


@pytest.mark.parametrize("case", FULL, ids=lambda c: c.name)
def test_matches_the_papers_closed_form(case):
    g = case.grads / case.grads.norm()
    u = g / g.norm(dim=1, keepdim=True)
    D, U = g[:1] - g[1:], u[:1] - u[1:]
    a = g[0] @ U.T @ torch.linalg.inv(D @ U.T)
    alpha = torch.cat([(1 - a.sum()).unsqueeze(0), a])
    ours = imtlg_weights(g @ g.T)
    assert torch.allclose(ours, alpha, atol=1e-8)


def test_zero_and_duplicate_rows():
    g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    d = mtoframe.aggregate("imtlg", g)
    proj = (g[:2] / g[:2].norm(dim=1, keepdim=True)) @ d
    assert torch.allclose(proj[0], proj[1])
    assert (g[[0, 1, 3]] @ d > 0).all()


def _pinv_weights(K):
    """α from the pseudo-inverse of the bordered system, as the method solved it before its
    well-conditioned shortcut (reference for the shortcut and its fallback)."""
    K = K / K.diagonal().max()
    T = K.shape[0]
    sq = K.diagonal().clamp_min(0)
    active = sq > sq.max() * 1e-30
    norms = torch.where(active, sq.sqrt(), torch.ones_like(sq))
    A = torch.zeros(T + 1, T + 1, dtype=torch.float64)
    A[:T, :T] = torch.where(active[:, None], K / norms[:, None], torch.eye(T, dtype=torch.float64))
    A[:T, T] = torch.where(active, -1.0, 0.0)
    A[T, :T] = 1.0
    return torch.linalg.pinv(A)[:T, T]


@pytest.mark.parametrize("T", [2, 3, 5, 10])
def test_inverse_shortcut_gives_the_pseudo_inverse_weights(T):
    gen = torch.Generator().manual_seed(T)
    for _ in range(50):
        g = torch.randn(T, 40, generator=gen, dtype=torch.float64) * torch.rand(T, 1, generator=gen,
                                                                               dtype=torch.float64) * 10
        K = g @ g.T
        assert torch.allclose(imtlg_weights(K), _pinv_weights(K), rtol=1e-10, atol=1e-12)


def test_singular_systems_fall_back_to_the_pseudo_inverse():
    x = torch.randn(1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cases = [torch.cat([x, 2 * x, torch.randn(2, 6, dtype=torch.float64)]),  # parallel rows
             torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64),
             torch.randn(4, 2, dtype=torch.float64)]  # four gradients in a plane
    for g in cases:
        K = g @ g.T
        assert torch.allclose(imtlg_weights(K), _pinv_weights(K), rtol=1e-9, atol=1e-12)
