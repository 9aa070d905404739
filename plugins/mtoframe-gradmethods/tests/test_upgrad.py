from __future__ import annotations

import pytest
import torch

import mtoframe

from mtoframe.testing.factories import gradient_families

CASES = list(gradient_families())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_non_conflicting(case):
    g = case.grads
    d = mtoframe.aggregate("upgrad", g)
    scale = float((g * g).sum(1).max())
    assert (g @ d >= -1e-9 * scale).all()


def test_no_conflict_gives_the_mean():
    g = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.0, 0.3, 1.0]])
    assert torch.allclose(mtoframe.aggregate("upgrad", g), g.mean(0))


def test_two_opposed_tasks_closed_form():
    # g2 = -g1 + orthogonal part: each projection is onto the half-spaces; check against the
    # explicit projections onto {v: g1·v >= 0, g2·v >= 0} of a 2-D example
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # cone {v: v_x >= 0, v_y >= v_x}; projection of g1=(1,0) is (0.5,0.5), of g2=(-1,1) is (0,1)
    assert torch.allclose(mtoframe.aggregate("upgrad", g), torch.tensor([0.25, 0.75]))
