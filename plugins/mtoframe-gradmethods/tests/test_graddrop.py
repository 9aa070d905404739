from __future__ import annotations

import torch

import mtoframe
from mtoframe.testing.factories import make_batch, make_conv_model, make_trainer


def test_leak_one_is_plain_sum():
    g = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mtoframe.aggregate(mtoframe.create("graddrop", leak=1.0), g), g.sum(0))


def test_keeps_only_the_agreeing_sign():
    # all-positive entries: purity 1 > U, every positive entry is kept; all-negative: purity 0
    g = torch.tensor([[1.0, -1.0, 2.0], [3.0, -2.0, 0.0]])
    assert torch.allclose(mtoframe.aggregate("graddrop", g), torch.tensor([4.0, -3.0, 2.0]))


def test_mixed_signs_pick_one_sign_per_feature():
    g = torch.randn(4, 200, generator=torch.Generator().manual_seed(1))
    d = mtoframe.aggregate("graddrop", g)
    pos, neg = g.clamp_min(0).sum(0), g.clamp_max(0).sum(0)
    assert (torch.isclose(d, pos) | torch.isclose(d, neg)).all()


def test_trainer_matches_hand_written_masking():
    """In the trainer the sign purity uses sign(Z) and batch sums, masks are shared by the batch."""
    model = make_conv_model()
    x, y = make_batch(model)
    trainer = make_trainer([("graddrop", {"seed": 5})], model=model, lr=0.0)
    trainer.step((x, y))
    got = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad()
    z = model.encoder(x)
    losses = [((model.heads[t](z) - y[t]) ** 2).mean() for t in model.heads]
    S = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0] for l in losses])  # T×B×C×H×W
    B = z.shape[0]
    s = (S * z.detach().sign()).sum(1).reshape(3, -1)
    P = 0.5 * (1 + s.sum(0) / (s.abs().sum(0) + 1e-7))
    U = torch.rand(P.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # model is float64
    M = ((P > U) & (s > 0)) | ((P < U) & (s < 0))
    new = (S.reshape(3, B, -1) * M.unsqueeze(1)).sum(0).view_as(z)
    torch.autograd.backward(z, new)
    for a, p in zip(got, model.encoder.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-12)
