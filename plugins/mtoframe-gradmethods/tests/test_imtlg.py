from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe_gradmethods.imtlg import imtlg_weights

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
