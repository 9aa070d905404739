from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe import SeededOrders
from mtoframe.testing.factories import gradient_families, make_batch, make_trainer, make_vector_model

CASES = list(gradient_families())


def gradvac_loop(G, rho, orders, beta, always, sizes):
    """LibMTL's loop (and the paper's EMA when always=True), written directly on the rows."""
    out = G.clone()
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()
    for i in range(G.shape[0]):
        for j in orders[i]:
            for k in range(len(sizes)):
                a, b = bounds[k], bounds[k + 1]
                gi, gj = out[i, a:b], G[j, a:b]
                phi = gi @ gj / (gi.norm() * gj.norm() + 1e-8)
                t = rho[i, j, k]
                if phi < t:
                    w = gi.norm() * (t * (1 - phi**2).sqrt() - phi * (1 - t**2).sqrt()) / (gj.norm() * (1 - t**2).sqrt() + 1e-8)
                    out[i, a:b] = gi + w * gj
                if phi < t or always:
                    rho[i, j, k] = (1 - beta) * t + beta * phi
    return out.sum(0)


@pytest.mark.parametrize("always", [False, True])
@pytest.mark.parametrize("case", [c for c in CASES if c.grads.shape[0] <= 5], ids=lambda c: c.name)
def test_equals_hand_written_loop_over_steps(case, always):
    m = mtoframe.create("gradvac", seed=2, ema_update="always" if always else "conflict", beta=0.5)
    rng = SeededOrders(2)
    T = case.grads.shape[0]
    rho = torch.zeros(T, T, 1)
    torch.manual_seed(0)
    for step in range(3):
        g = case.grads if step == 0 else case.grads + 0.5 * torch.randn_like(case.grads) * case.grads.norm() / case.grads.numel() ** 0.5
        d = mtoframe.aggregate(m, g)
        ref = gradvac_loop(g, rho, rng.orders(T), 0.5, always, [g.shape[1]])
        assert torch.allclose(d, ref, rtol=1e-9, atol=1e-9 * float(g.norm()))
        assert torch.allclose(m.rho, rho, atol=1e-10)


def test_first_step_only_fixes_negative_cosines():
    # targets start at 0: with always-positive cosines nothing changes, and the EMA (conflict
    # mode) stays at zero
    g = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1]])
    m = mtoframe.create("gradvac")
    assert torch.allclose(mtoframe.aggregate(m, g), g.sum(0))
    assert torch.equal(m.rho, torch.zeros(2, 2, 1))


@pytest.mark.parametrize("groups", ["layer", "parameter"])
def test_groups_inside_trainer(groups):
    model = make_vector_model()
    trainer = make_trainer([("gradvac", {"groups": groups})], model=model)
    for s in range(2):
        trainer.step(make_batch(model, seed=s))
    m = trainer.stack[0]
    n = {"layer": 2, "parameter": 4}[groups]
    assert m.sizes is not None and len(m.sizes) == n and m.rho.shape == (3, 3, n)
    assert sum(m.sizes) == sum(p.numel() for p in model.encoder.parameters())


def test_parameter_groups_need_a_trainer():
    with pytest.raises(mtoframe.MtoError, match="groups='whole'"):
        mtoframe.aggregate(mtoframe.create("gradvac", groups="parameter"), CASES[0].grads)


@pytest.mark.parametrize("always", [False, True], ids=["conflict", "always"])
def test_skipped_non_finite_step_leaves_the_targets_usable(always):
    from mtoframe.testing import PoisonGradient

    model = make_vector_model()
    trainer = make_trainer([("gradvac", {"ema_update": "always" if always else "conflict"})], model=model,
                           nonfinite="skip", plugins=[PoisonGradient(steps=[1], task="b")])
    trainer.step(make_batch(model, seed=0))
    before = trainer.stack[0].rho.clone()
    assert trainer.step(make_batch(model, seed=1)).skipped
    assert torch.equal(trainer.stack[0].rho, before)  # the skipped step left the targets as they were
    assert not trainer.step(make_batch(model, seed=2)).skipped and torch.isfinite(trainer.stack[0].rho).all()


@pytest.mark.parametrize("T", [2, 3, 5, 10])
@pytest.mark.parametrize("seed", range(3))
def test_gram_space_equals_the_vector_form_on_random_matrices(T, seed):
    gen = torch.Generator().manual_seed(seed)
    m, rng = mtoframe.create("gradvac", seed=seed, beta=0.5), SeededOrders(seed)
    rho = torch.zeros(T, T, 1, dtype=torch.float64)
    for _ in range(3):  # the targets move, so later steps correct positive cosines too
        g = torch.randn(T, 40, generator=gen, dtype=torch.float64) * torch.logspace(-2, 2, T, dtype=torch.float64)[:, None]
        d = mtoframe.aggregate(m, g)
        ref = gradvac_loop(g, rho, rng.orders(T), 0.5, False, [g.shape[1]])
        assert float((d - ref).norm()) <= 1e-6 * float(ref.norm())
        torch.testing.assert_close(m.rho, rho, rtol=0, atol=1e-10)
