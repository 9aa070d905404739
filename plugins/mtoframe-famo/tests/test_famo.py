import copy
import io

import pytest
import torch
from torch import nn

import mtoframe
from mtoframe import Method, Role, StepContext, hookimpl
from mtoframe.errors import OptionError, StackError
from mtoframe.testing import make_batch, make_tasks, make_trainer, make_vector_model
from mtoframe_famo import FAMO, softmax_vjp

D64 = torch.float64


def bare_ctx(losses, tasks=("a", "b", "c")):
    ctx = StepContext(tasks=tuple(tasks), losses=losses)
    return ctx


def step_bare(method, before, after):
    """One FAMO logit update on a bare context: losses ``before``, then ``after`` the step."""
    ctx = bare_ctx(before.clone(), tasks=[f"t{i}" for i in range(len(before))])
    method.on_task_losses(ctx=ctx)
    ctx.loss_recomputer = lambda train_mode: after.clone()
    method.on_after_step(ctx=ctx)
    return ctx


def test_registered_and_options_validated():
    assert "famo" in mtoframe.available()
    assert isinstance(mtoframe.create("famo"), FAMO)
    with pytest.raises(OptionError, match="w_lr"):
        FAMO(w_lr=0.0)
    with pytest.raises(OptionError, match="extra_forward_mode"):
        FAMO(extra_forward_mode="twice")
    with pytest.raises(OptionError, match="min_losses"):
        FAMO(min_losses="zero")
    assert FAMO(min_losses=[0.0, 0.1]).options.min_losses == (0.0, 0.1)


def test_weights_sum_to_one_and_equal_softmax_for_equal_losses():
    m = FAMO()
    losses = torch.full((3,), 0.7, dtype=D64, requires_grad=True)
    ctx = bare_ctx(losses)
    m._ensure(3, losses)
    with torch.no_grad():
        m.logits.copy_(torch.tensor([0.3, -1.2, 0.5], dtype=D64))
    m.on_task_losses(ctx=ctx)
    # effective weight of each raw loss in the objective Σ w_t log D_t
    (grad,) = torch.autograd.grad((ctx.weights * ctx.losses).sum(), losses)
    z = torch.softmax(m.logits.detach(), -1)
    torch.testing.assert_close(grad, z)
    torch.testing.assert_close(grad.sum(), torch.tensor(1.0, dtype=D64))
    torch.testing.assert_close(m.weights(), z)


def test_objective_matches_reference_formula():
    m = FAMO(min_losses=(0.1, 0.0, 0.2))
    losses = torch.tensor([0.9, 2.0, 0.4], dtype=D64, requires_grad=True)
    ctx = bare_ctx(losses)
    m.on_task_losses(ctx=ctx)
    (ours,) = torch.autograd.grad((ctx.weights * ctx.losses).sum(), losses)
    z = torch.softmax(torch.zeros(3, dtype=D64), -1)
    d = losses - torch.tensor([0.1, 0.0, 0.2], dtype=D64) + 1e-8
    c = (z / d).sum().detach()
    (ref,) = torch.autograd.grad((d.log() * z / c).sum(), losses)
    torch.testing.assert_close(ours, ref)


def test_task_whose_log_loss_fell_more_gets_its_logit_lowered():
    m = FAMO(gamma=0.0)
    before = torch.tensor([1.0, 1.0, 1.0], dtype=D64)
    after = torch.tensor([0.5, 0.9, 0.95], dtype=D64)
    step_bare(m, before, after)
    xi = m.logits.detach()
    assert xi[0] < 0 < xi[2]
    assert xi[0] < xi[1] < xi[2]


def test_logits_decay_with_gamma_and_no_loss_change():
    m = FAMO(gamma=1e-2)
    losses = torch.tensor([0.8, 1.5, 0.3], dtype=D64)
    m._ensure(3, losses)
    start = torch.tensor([1.0, -0.5, 0.25], dtype=D64)
    with torch.no_grad():
        m.logits.copy_(start)
    for _ in range(5):
        step_bare(m, losses, losses)
        norm = m.logits.detach().abs()
        assert (norm < start.abs()).all()
        start = norm
    # without decay and without loss change nothing moves
    m0 = FAMO(gamma=0.0)
    step_bare(m0, losses, losses)
    assert torch.count_nonzero(m0.logits.detach()) == 0


def test_softmax_vjp_closed_form_and_the_gradient_famo_applies():
    gen = torch.Generator().manual_seed(0)
    xi = torch.randn(4, generator=gen, dtype=D64)
    delta = torch.randn(4, generator=gen, dtype=D64)
    z = torch.softmax(xi, -1)
    closed = (torch.diag(z) - torch.outer(z, z)) @ delta
    torch.testing.assert_close(softmax_vjp(xi, delta), closed)
    leaf = xi.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(torch.softmax(leaf, -1), leaf, grad_outputs=delta)
    torch.testing.assert_close(auto, closed)

    # the gradient actually fed to Adam: its first moment after one step is (1 − β1)·g
    m = FAMO(gamma=0.0)
    before = torch.rand(4, generator=gen, dtype=D64) + 0.5
    after = before * (torch.rand(4, generator=gen, dtype=D64) + 0.3)
    m._ensure(4, before)
    with torch.no_grad():
        m.logits.copy_(xi)
    step_bare(m, before, after)
    d = torch.log(before + 1e-8) - torch.log(after + 1e-8)
    g = m._opt.state[m.logits]["exp_avg"] / 0.1
    torch.testing.assert_close(g, (torch.diag(z) - torch.outer(z, z)) @ d)


def hand_famo(model, batches, *, steps, lr, w_lr, gamma):
    """The FAMO loop written out as in the paper / official code, float64."""
    tasks = list(model.heads.keys())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xi = torch.zeros(len(tasks), dtype=D64, requires_grad=True)
    xi_opt = torch.optim.Adam([xi], lr=w_lr, weight_decay=gamma)
    mse = lambda p, t: ((p - t) ** 2).mean()  # noqa: E731
    for k in range(steps):
        x, y = batches[k % len(batches)]
        model.train()
        opt.zero_grad()
        preds = model(x)
        losses = torch.stack([mse(preds[t], y[t]) for t in tasks])
        z = torch.softmax(xi, -1).detach()
        d = losses + 1e-8
        c = (z / d).sum().detach()
        (d.log() * z / c).sum().backward()
        opt.step()
        with torch.no_grad():
            preds = model(x)
            new = torch.stack([mse(preds[t], y[t]) for t in tasks])
        delta = d.detach().log() - (new + 1e-8).log()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(torch.softmax(xi, -1), xi, grad_outputs=delta)
        xi_opt.zero_grad()
        xi.grad = g
        xi_opt.step()
    return xi.detach()


def test_trainer_steps_equal_hand_written_loop():
    model = make_vector_model()
    ref_model = copy.deepcopy(model)
    batches = [make_batch(model, seed=s) for s in (1, 2, 3)]
    trainer = make_trainer([FAMO(gamma=1e-3)], model=model, lr=0.05)
    for k in range(7):
        trainer.step(batches[k % 3])
    xi = hand_famo(ref_model, batches, steps=7, lr=0.05, w_lr=0.025, gamma=1e-3)
    method = trainer.stack[0]
    torch.testing.assert_close(method.logits.detach(), xi, rtol=1e-10, atol=1e-12)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert xi.abs().max() > 1e-3  # the loop did move the logits


def test_partial_labels_only_present_tasks_get_gradient():
    model = make_vector_model()
    trainer = make_trainer([FAMO(gamma=0.0)], model=model)
    x, y = make_batch(model)
    trainer.step((x, {"a": y["a"], "c": y["c"]}))
    xi = trainer.stack[0].logits.detach()
    assert xi[1] == 0 and xi[0] != 0 and xi[2] != 0


def bn_model():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.Tanh())
    return mtoframe.MultiTaskModel(encoder=enc, heads={t: nn.Linear(6, 1) for t in "abc"}).double()


@pytest.mark.parametrize("mode,expected", [("train", 2), ("eval", 1)])
def test_extra_forward_mode_and_batchnorm(mode, expected):
    model = bn_model()
    trainer = make_trainer([FAMO(extra_forward_mode=mode)], model=model)
    trainer.step(make_batch(model))
    assert int(model.encoder[1].num_batches_tracked) == expected
    assert model.training


def test_state_dict_round_trip_resumes_identically():
    model = make_vector_model()
    batches = [make_batch(model, seed=s) for s in (1, 2)]
    trainer = make_trainer([FAMO()], model=model, optimizer="adam", lr=1e-2)
    for k in range(3):
        trainer.step(batches[k % 2])
    buf = io.BytesIO()
    torch.save(trainer.stack[0].state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    clone_model = copy.deepcopy(model)
    clone = FAMO()
    clone.load_state_dict(state)
    opt = torch.optim.SGD(clone_model.parameters(), lr=0.05)
    t2 = mtoframe.Trainer(clone_model, make_tasks(), [clone], optimizer=opt)
    t1 = make_trainer([trainer.stack[0]], model=model)  # same method object, fresh SGD
    for k in range(3):
        t1.step(batches[k % 2])
        t2.step(batches[k % 2])
    torch.testing.assert_close(trainer.stack[0].logits, clone.logits, rtol=0, atol=0)
    fresh = FAMO()
    fresh.load_state_dict({})
    assert fresh.state_dict() == {}


class RowSpy(Method):
    """Test-only gradient transform that records the rows it receives."""

    name = "rowspy"
    roles = Role.TRANSFORM

    @hookimpl
    def on_shared_grads(self, ctx):
        self.rows = ctx.grads.clone()
        ctx.grads = ctx.grads * 1.0


class Fake(Method):
    roles = Role.AGGREGATOR

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.set_update(ctx.grads.sum(0))


def test_stack_with_gradient_transform_sees_famo_weighted_rows():
    model = make_vector_model()
    spy = RowSpy()
    trainer = make_trainer([FAMO(), spy], model=model)
    x, y = make_batch(model)
    trainer.step((x, y))
    # rows must be z_t · c · ∇L_t / D_t for the shared parameters, z = 1/3 at the first step
    model2 = make_vector_model()  # the trainer's model has moved: recompute on the initial weights
    preds = model2(x)
    losses = torch.stack([((preds[t] - y[t]) ** 2).mean() for t in "abc"])
    d = losses.detach() + 1e-8
    z = torch.full((3,), 1 / 3, dtype=D64)
    c = 1 / (z / d).sum()
    rows = []
    for t in range(3):
        gs = torch.autograd.grad(losses[t], model2.shared_parameters(), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in gs]) * z[t] * c / d[t])
    torch.testing.assert_close(spy.rows, torch.stack(rows))


def test_stack_rejections_name_the_reason():
    class OtherLoss(Method):
        name = "otherloss"
        roles = Role.LOSS

    class Nash(Fake):
        name = "scaleinvariant"
        ignores_loss_weights = "its update is invariant to rescaling each task's gradient"

    class Cagrad(Fake):
        name = "cagrad"

    with pytest.raises(StackError, match="loss-level method 'otherloss'"):
        make_trainer([FAMO(), OtherLoss()])
    with pytest.raises(StackError, match="invariant to rescaling"):
        make_trainer([FAMO(), Nash()])
    make_trainer([FAMO(), RowSpy(), Cagrad()])  # meaningful: accepted
