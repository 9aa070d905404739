"""The adapter reproduces TorchJD's aggregators exactly, alone and inside the Trainer."""

from __future__ import annotations

import pytest
import torch
from torchjd import aggregation

import mtoframe
from mtoframe.testing import gradient_families, make_batch, make_tasks, make_trainer, make_vector_model
from mtoframe_torchjd import METHODS, MGDA, PCGrad, UPGrad


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_aggregate_equals_torchjd_direct_call(cls):
    direct = getattr(aggregation, cls.aggregator_name)()
    for case in gradient_families(tasks=(2, 3, 5), dim=20):
        ours = mtoframe.aggregate(cls.name, case.grads.clone())
        torch.manual_seed(0)  # torchjd.pcgrad's default seed: its stream is the global RNG seeded so
        assert torch.equal(ours, direct(case.grads.clone())), case.name


def test_random_stream_is_private_and_checkpointed():
    g = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = PCGrad(seed=3)
    torch.manual_seed(123)
    first = mtoframe.aggregate(m, g)
    after = torch.rand(())
    torch.manual_seed(123)
    assert after == torch.rand(())  # the global RNG was left untouched
    state = m.state_dict()
    second = mtoframe.aggregate(m, g)
    assert not torch.equal(first, second)  # the stream advanced: a new order
    restored = PCGrad(seed=3)
    restored.load_state_dict(state)
    assert torch.equal(mtoframe.aggregate(restored, g), second)


def test_options_reach_the_aggregator():
    g = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mtoframe.aggregate(MGDA(max_iters=1), g), aggregation.MGDA(max_iters=1)(g))
    assert not torch.equal(mtoframe.aggregate(MGDA(max_iters=1), g), mtoframe.aggregate(MGDA(), g))
    from torchjd.linalg import QuadprogProjector

    p = QuadprogProjector(norm_eps=0.0, reg_eps=1e-9)
    assert torch.equal(mtoframe.aggregate(UPGrad(norm_eps=0.0, reg_eps=1e-9), g), aggregation.UPGrad(projector=p)(g))
    with pytest.raises(mtoframe.OptionError, match="reg_eps"):
        UPGrad(reg_eps=-1.0)


def _hand_step(model, batch, lr):
    """One SGD step written out: per-task gradients of the shared parameters, TorchJD's UPGrad on
    them, heads get their own task's gradient."""
    tasks = make_tasks(list(model.heads))
    x, y = batch
    shared = model.shared_parameters()
    z = model.encoder(x)
    rows, head_grads = [], {}
    for t in tasks:
        loss = t.loss(model.heads[t.name](z), y[t.name])
        grads = torch.autograd.grad(loss, shared + list(model.heads[t.name].parameters()), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
        head_grads[t.name] = grads[len(shared):]
    d = aggregation.UPGrad()(torch.stack(rows))
    with torch.no_grad():
        offset = 0
        for p in shared:
            p -= lr * d[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
        for name, grads in head_grads.items():
            for p, g in zip(model.heads[name].parameters(), grads):
                p -= lr * g


def test_upgrad_inside_trainer_equals_torchjd_by_hand():
    lr = 0.05
    model = make_vector_model()
    reference = make_vector_model()
    trainer = make_trainer(["torchjd.upgrad"], model=model, lr=lr)
    for seed in range(3):
        batch = make_batch(model, seed=seed)
        ctx = trainer.step(batch)
        assert ctx.grad_space == "params"
        _hand_step(reference, batch, lr)
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)


def test_representation_space_trains_encoder():
    model = make_vector_model()
    before = [p.detach().clone() for p in model.encoder.parameters()]
    trainer = make_trainer([("torchjd.upgrad", {"space": "representation"})], model=model)
    ctx = trainer.step(make_batch(model))
    assert ctx.grad_space == "representation" and ctx.grads.shape == (3, 8 * 6)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))


def test_matches_gradmethods_upgrad_when_installed():
    if "upgrad" not in mtoframe.available():
        pytest.skip("mtoframe-gradmethods (upgrad) is not installed")
    # exact dual-cone projection (no Gram regularisation) so both solve the same problem
    ours = UPGrad(norm_eps=0.0, reg_eps=0.0)
    for case in gradient_families(tasks=(2, 3, 5), dim=20):
        if not case.name.startswith(("random", "conflicting")):
            continue  # rank-deficient Grams need reg_eps > 0 for quadprog
        a = mtoframe.aggregate(ours, case.grads)
        b = mtoframe.aggregate("upgrad", case.grads)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8 * case.grads.norm().item(), msg=case.name)
