import copy
import io

import pytest
import torch
from lossweighting_helpers import D64, Identity, mse

from mtoframe import StepContext
from mtoframe.errors import OptionError
from mtoframe.testing import make_batch, make_trainer, make_vector_model
from mtoframe_lossweighting import IMTLL, UW


def objective_grad(method, losses, s):
    ctx = StepContext(tasks=("a", "b", "c"), losses=losses)
    method.values(ctx)
    with torch.no_grad():
        method.param.copy_(s)
    method.on_task_losses(ctx=ctx)
    total = (ctx.weights * ctx.losses).sum() + sum(ctx.extra_losses.values())
    (g,) = torch.autograd.grad(total, method.param)
    return total, g


def test_uw_optimum_of_each_term_is_log_loss():
    losses = torch.tensor([0.2, 1.0, 7.5], dtype=D64)
    m = UW()
    _, g = objective_grad(m, losses, torch.log(losses))
    torch.testing.assert_close(g, torch.zeros(3, dtype=D64), atol=1e-12, rtol=0)
    # each term is convex in s: moving away from log L raises it
    for shift in (-0.3, 0.3):
        s = torch.log(losses) + shift
        _, g = objective_grad(m, losses, s)
        assert (torch.sign(g) == torch.sign(torch.tensor(shift, dtype=D64))).all()
    total_opt, _ = objective_grad(m, losses, torch.log(losses))
    total_off, _ = objective_grad(m, losses, torch.log(losses) + 0.1)
    assert total_opt < total_off
    torch.testing.assert_close(total_opt, (0.5 + 0.5 * torch.log(losses)).sum())


def test_imtll_optimum_holds_scaled_losses_at_one():
    losses = torch.tensor([0.2, 1.0, 7.5], dtype=D64)
    _, g = objective_grad(IMTLL(), losses, -torch.log(losses))
    torch.testing.assert_close(g, torch.zeros(3, dtype=D64), atol=1e-12, rtol=0)
    _, g = objective_grad(IMTLL(), losses, torch.zeros(3, dtype=D64))
    torch.testing.assert_close(g, losses - 1)


@pytest.mark.parametrize("cls", [UW, IMTLL])
@pytest.mark.parametrize("with_transform", [False, True])
def test_trainer_step_equals_hand_loop(cls, with_transform):
    model = make_vector_model()
    ref = copy.deepcopy(model)
    batch = make_batch(model)
    m = cls(lr=0.1)
    stack = [m, Identity()] if with_transform else [m]
    trainer = make_trainer(stack, model=model, lr=0.05)
    trainer.step(batch)
    group = trainer.optimizer.param_groups[-1]
    assert group["params"] == [m.param] and group["weight_decay"] == 0.0 and group["lr"] == 0.1

    # hand-written reference (LibMTL's objective), plain SGD on both groups
    s = torch.full((3,), cls.init_value, dtype=D64, requires_grad=True)
    x, y = batch
    preds = ref(x)
    losses = torch.stack([mse(preds[t], y[t]) for t in "abc"])
    if cls is UW:
        obj = (losses / (2 * s.exp()) + s / 2).sum()
    else:
        obj = (s.exp() * losses - s).sum()
    obj.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.05 * p.grad
        s -= 0.1 * s.grad
    torch.testing.assert_close(m.param.detach(), s.detach())
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_state_round_trip_copies_in_place():
    model = make_vector_model()
    m = UW()
    trainer = make_trainer([m], model=model)
    trainer.step(make_batch(model))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    param = m.param
    with torch.no_grad():
        m.param.zero_()
    m.load_state_dict(state)
    assert m.param is param  # the optimiser still holds it
    torch.testing.assert_close(m.param.detach(), state["param"])
    assert not torch.equal(state["param"], torch.full((3,), -0.5, dtype=D64))


def test_lr_option_validated():
    with pytest.raises(OptionError, match="'lr'"):
        UW(lr=-1.0)
