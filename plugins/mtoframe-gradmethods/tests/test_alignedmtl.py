from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe_gradmethods.alignedmtl import aligned_weights

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
