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


def test_warm_start_from_the_previous_support_keeps_every_update(monkeypatch):
    # a training-like sequence at T = 40: slowly drifting gradients, half the pairs conflicting.
    # One UPGrad object carries the previous support into each solve; a fresh object per step
    # starts from the default guess. The updates must agree to round-off, in float64.
    import mtoframe_gradmethods.upgrad as upgrad

    real = upgrad.nnqp
    starts = []

    def recording(k, q, **kw):
        starts.append(kw.get("start"))
        return real(k, q, **kw)

    monkeypatch.setattr(upgrad, "nnqp", recording)
    gen = torch.Generator().manual_seed(17)
    g = torch.randn(40, 120, generator=gen, dtype=torch.float64)
    warm = mtoframe.create("upgrad")
    for _ in range(6):
        g = g + 0.02 * torch.randn(g.shape, generator=gen, dtype=torch.float64)
        d = mtoframe.aggregate(warm, g)
        cold = mtoframe.aggregate(mtoframe.create("upgrad"), g)
        torch.testing.assert_close(d, cold, rtol=0, atol=1e-12 * float(g.norm(dim=1).max()))
        assert (g @ d >= -1e-9 * float((g * g).sum(1).max())).all()
    assert warm.failures.count == 0
    warm_starts = starts[::2]  # the calls of the object that carries its support
    assert warm_starts[0] is None and all(s is not None and s.shape == (40, 40) for s in warm_starts[1:])
    # another task list: the support of different tasks is not used as the guess
    mtoframe.aggregate(warm, g[:39])
    assert starts[-1] is None
