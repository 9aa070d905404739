import io

import pytest
import torch
from lossweighting_helpers import D64, Identity

import mtoframe
from mtoframe import Method, Role
from mtoframe.errors import StackError
from mtoframe.testing import gradient_families, make_batch, make_trainer, make_vector_model
from mtoframe_lossweighting import UW, ExcessMTL


def hand_excess(grad_seq, step_size):
    """ExcessMTL's weight recursion written out for full-task steps (official code)."""
    T, P = grad_seq[0].shape
    lam = torch.ones(T, dtype=D64)
    acc = torch.zeros(T, P, dtype=D64)
    initial = None
    updates = []
    for g in grad_seq:
        acc = acc + g**2
        e = torch.stack([g[i] * (1 / torch.sqrt(acc[i] + 1e-7)) @ g[i] for i in range(T)])
        if initial is None:
            initial = e
        else:
            lam = lam * torch.exp(step_size * e / initial)
            lam = lam / lam.sum() * T
        updates.append(lam @ g)
    return updates, lam


def test_aggregate_equals_hand_recursion():
    gen = torch.Generator().manual_seed(0)
    seq = [torch.randn(3, 20, generator=gen, dtype=D64) * torch.tensor([[1.0], [5.0], [0.1]], dtype=D64) for _ in range(6)]
    m = ExcessMTL(step_size=0.5)
    ours = [mtoframe.aggregate(m, g) for g in seq]
    ref, lam = hand_excess(seq, 0.5)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(m.weights, lam)
    assert not torch.allclose(lam, torch.ones(3, dtype=D64))


def test_first_step_is_sum_and_families_stay_finite():
    for case in gradient_families():
        m = ExcessMTL()
        first = mtoframe.aggregate(m, case.grads)
        torch.testing.assert_close(first, case.grads.sum(0))
        second = mtoframe.aggregate(m, case.grads)
        assert torch.isfinite(second).all(), case.name
        torch.testing.assert_close(m.weights.sum(), torch.tensor(float(len(case.grads)), dtype=D64))


def test_in_trainer_heads_get_lambda_and_state_round_trip():
    model = make_vector_model()
    m = ExcessMTL(step_size=1.0)
    trainer = make_trainer([Identity(), m], model=model)
    for s in range(3):
        ctx = trainer.step(make_batch(model, seed=s))
    torch.testing.assert_close(ctx.head_weights, m.weights)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    other = ExcessMTL(step_size=1.0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    g = torch.randn(3, m.sq_sum.shape[1], dtype=D64)
    torch.testing.assert_close(mtoframe.aggregate(m, g), mtoframe.aggregate(other, g))


def test_partial_labels_index_state_by_task():
    m = ExcessMTL(step_size=1.0)
    ctx = mtoframe.StepContext(tasks=("a", "c"), all_tasks=("a", "b", "c"), grad_space="params")
    ctx.grads = torch.ones(2, 4, dtype=D64)
    m.on_shared_grads(ctx=ctx)
    assert torch.isnan(m.initial[1]) and not torch.isnan(m.initial[0])
    assert m.sq_sum[1].abs().sum() == 0


def test_rejects_loss_level_methods():
    with pytest.raises(StackError, match="excessmtl|ExcessMTL"):
        make_trainer([UW(), ExcessMTL()])

    class Loss(Method):
        name = "someloss"
        roles = Role.LOSS

    with pytest.raises(StackError, match="own task weights"):
        make_trainer([Loss(), ExcessMTL()])


def test_skipped_non_finite_step_leaves_the_accumulators_as_they_were():
    from mtoframe.testing import PoisonGradient

    model = make_vector_model()
    trainer = make_trainer(["excessmtl"], model=model, nonfinite="skip", plugins=[PoisonGradient(steps=[2], task="b")])
    m = trainer.stack[0]
    for seed in range(2):
        trainer.step(make_batch(model, seed=seed))
    before = [m.sq_sum.clone(), m.initial.clone(), m.weights.clone()]
    assert trainer.step(make_batch(model, seed=2)).skipped
    assert all(torch.equal(a, b) for a, b in zip(before, [m.sq_sum, m.initial, m.weights]))
    assert not trainer.step(make_batch(model, seed=3)).skipped
    assert torch.isfinite(m.sq_sum).all() and torch.isfinite(m.weights).all()
