from __future__ import annotations

import io

import pytest
import torch

import mtoframe
from mtoframe.testing import PoisonGradient
from mtoframe.testing.factories import gradient_families, make_batch, make_conv_model, make_trainer, make_vector_model

CASES = list(gradient_families())


def ema_loop(Gs, beta, sigma):
    """The recursion of the paper/LibMTL written out by hand."""
    buf = torch.zeros_like(Gs[0])
    outs = []
    for k, G in enumerate(Gs, start=1):
        bk = beta / k**sigma
        buf = bk * buf + (1 - bk) * G
        n = buf.norm(dim=1)
        outs.append(sum(n.max() / (n[t] + 1e-8) * buf[t] for t in range(G.shape[0])))
    return outs


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_ema_recursion_by_hand(sigma):
    g = torch.Generator().manual_seed(0)
    Gs = [torch.randn(3, 7, generator=g, dtype=torch.float64) for _ in range(5)]
    m = mtoframe.create("dbmtl", beta=0.9, beta_sigma=sigma)
    got = [mtoframe.aggregate(m, G) for G in Gs]
    for a, b in zip(got, ema_loop(Gs, 0.9, sigma)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert m.k == 5


def test_first_step_closed_form():
    G = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    d = mtoframe.aggregate("dbmtl", G)
    # ĝ = 0.1 G; norms 0.5, 0.1; d = 0.5 * (ĝ1/0.5 + ĝ2/0.1)
    assert torch.allclose(d, 0.5 * (0.1 * G[0] / (0.5 + 1e-8) + 0.1 * G[1] / (0.1 + 1e-8)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_finite_and_equal_magnitudes(case):
    m = mtoframe.create("dbmtl")
    d = mtoframe.aggregate(m, case.grads)
    assert torch.isfinite(d).all()


def test_state_dict_round_trip():
    g = torch.Generator().manual_seed(1)
    Gs = [torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    m = mtoframe.create("dbmtl", beta_sigma=0.5)
    for G in Gs[:2]:
        mtoframe.aggregate(m, G)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = mtoframe.create("dbmtl", beta_sigma=0.5)
    fresh.load_state_dict(state)
    for G in Gs[2:]:
        assert torch.equal(mtoframe.aggregate(m, G), mtoframe.aggregate(fresh, G))
    m.reset()
    assert m.k == 0 and m.buffer is None


def _per_task(model, x, y, log):
    z = model.encoder(x)
    losses = torch.stack([((model.heads[t](z) - y[t]) ** 2).mean() for t in model.heads])
    if log:
        losses = torch.log(losses + 1e-8)
    enc = list(model.encoder.parameters())
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], enc, retain_graph=True)])
                     for t in range(len(losses))])
    return losses, G


@pytest.mark.parametrize("log", [True, False])
def test_trainer_step_matches_hand_written(log):
    model = make_conv_model()
    batches = [make_batch(model, seed=s) for s in range(2)]
    trainer = make_trainer([("dbmtl", {"log_transform": log})], model=model, lr=0.0)
    Gs = []
    for x, y in batches:
        trainer.step((x, y))
        got_enc = torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters()])
        got_heads = [p.grad.clone() for p in model.head_parameters()]
        model.zero_grad()
        losses, G = _per_task(model, x, y, log)
        Gs.append(G)
        expected = ema_loop(Gs, 0.9, 0.0)[-1]
        assert torch.allclose(got_enc, expected, atol=1e-12)
        losses.sum().backward(inputs=model.head_parameters())
        for a, p in zip(got_heads, model.head_parameters()):
            assert torch.allclose(a, p.grad, atol=1e-12)
        model.zero_grad()


def test_log_only_is_one_backward_of_log_losses():
    model = make_vector_model()
    x, y = make_batch(model)
    trainer = make_trainer([("dbmtl", {"balance_magnitude": False})], model=model, lr=0.0)
    assert trainer.grad_space is None  # no per-task gradients
    trainer.step((x, y))
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    z = model.encoder(x)
    sum(torch.log(((model.heads[t](z) - y[t]) ** 2).mean() + 1e-8) for t in model.heads).backward()
    for a, p in zip(got, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-12)


def test_partial_labels_keep_per_task_ema():
    model = make_vector_model()
    trainer = make_trainer(["dbmtl"], model=model)
    x, y = make_batch(model)
    trainer.step((x, y))
    m = trainer.stack[0]
    before = m.buffer.clone()
    trainer.step((x, {"a": y["a"], "c": y["c"]}))
    assert torch.equal(m.buffer[1], before[1])  # task b absent: its EMA untouched
    assert not torch.equal(m.buffer[0], before[0])


def test_both_switches_off_is_rejected():
    with pytest.raises(mtoframe.OptionError, match="log_transform"):
        mtoframe.create("dbmtl", log_transform=False, balance_magnitude=False)
    with pytest.raises(mtoframe.OptionError, match="beta"):
        mtoframe.create("dbmtl", beta=1.5)


def test_docstring_says_what_heads_receive():
    assert "heads receive" in " ".join(mtoframe.create("dbmtl").__doc__.split()).lower()


@pytest.mark.parametrize("log", [True, False])
def test_non_finite_gradient_is_skipped_without_poisoning_the_ema(log):
    model = make_vector_model()
    trainer = make_trainer([("dbmtl", {"log_transform": log})], model=model, nonfinite="skip", plugins=[PoisonGradient(steps=[1], task="a")])
    m = trainer.stack[0]
    trainer.step(make_batch(model, seed=0))
    before = m.buffer.clone()
    ctx = trainer.step(make_batch(model, seed=1))
    assert ctx.skipped and trainer.counters["skipped_steps"] == 1
    assert torch.equal(m.buffer, before)  # the skipped step left the EMA as it was
    params = [p.detach().clone() for p in model.parameters()]
    ctx = trainer.step(make_batch(model, seed=2))
    assert not ctx.skipped and torch.isfinite(m.buffer).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(params, model.parameters()))
