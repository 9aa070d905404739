"""The step pipeline against hand-written PyTorch, hook order, stacking rule, spaces, partial labels."""

from __future__ import annotations

import pytest
import torch
from helpers import Halve, Negate, ScaledSum, named_recorder, params_of

import mtoframe
from mtoframe.testing import make_batch, make_conv_model, make_tasks, make_trainer, make_vector_model


def _mse(p, t):
    return ((p - t) ** 2).mean()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("make_model", [make_vector_model, make_conv_model])
def test_ew_equals_hand_written_loop(opt, make_model):
    model_a, model_b = make_model(), make_model()
    trainer = make_trainer([], model=model_a, optimizer=opt, lr=0.01)
    opt_b = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[opt](model_b.parameters(), lr=0.01)
    for step in range(5):
        batch = make_batch(model_a, seed=step)
        trainer.step(batch)
        x, ys = batch
        opt_b.zero_grad()
        z = model_b.encoder(x)
        sum(_mse(model_b.heads[t](z), ys[t]) for t in ys).backward()
        opt_b.step()
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)


def test_hooks_run_in_user_order_not_registration_order():
    log: list = []
    stack = [named_recorder(n, log) for n in ("zeta", "alpha", "mid")]
    trainer = make_trainer(stack)
    trainer.step(make_batch(trainer.model))
    for hook in ("on_representation", "on_task_losses", "on_after_step"):
        assert [tag for tag, h in log if h == hook] == ["zeta", "alpha", "mid"]
    assert [h for _, h in log][::3] == ["on_representation", "on_task_losses", "on_after_step"]


def test_aggregator_followed_by_transform_is_rejected_before_any_step():
    model = make_vector_model()
    before = params_of(model)
    with pytest.raises(mtoframe.StackError, match="must come last"):
        make_trainer([ScaledSum(), Negate()], model=model)
    with pytest.raises(mtoframe.StackError, match="at most one"):
        make_trainer([ScaledSum(), type("Other", (ScaledSum,), {"name": "other"})()], model=model)
    with pytest.raises(mtoframe.StackError, match="gradient space"):
        make_trainer([Negate(), ScaledSum(space="representation")], model=model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_transform_then_aggregator_pipeline():
    """negate row 0, then sum: the encoder moves along -g_0 + g_1 + g_2."""
    model = make_vector_model()
    batch = make_batch(model)
    trainer = make_trainer([Negate(), ScaledSum()], model=model, lr=1.0)
    enc = model.shared_parameters()
    x, ys = batch
    z = model.encoder(x)
    losses = [_mse(model.heads[t](z), ys[t]) for t in ("a", "b", "c")]
    grads = [torch.autograd.grad(l, enc, retain_graph=True) for l in losses]
    expected = [p.detach() - (-g0 + g1 + g2) for p, g0, g1, g2 in zip(enc, *grads)]
    trainer.step(batch)
    for p, e in zip(enc, expected):
        torch.testing.assert_close(p.detach(), e)


@pytest.mark.parametrize("make_model", [make_vector_model, make_conv_model])
def test_representation_space_aggregation_trains_encoder_like_ew(make_model):
    m_ew, m_rep = make_model(), make_model()
    t_ew = make_trainer([], model=m_ew)
    t_rep = make_trainer([ScaledSum(space="representation")], model=m_rep)
    before = params_of(m_rep.encoder)
    for s in range(3):
        b = make_batch(m_ew, seed=s)
        t_ew.step(b)
        t_rep.step(b)
    assert any(not torch.equal(a, p) for a, p in zip(before, m_rep.encoder.parameters())), "encoder froze"
    for p, q in zip(m_ew.parameters(), m_rep.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-13)


def test_loss_weights_reach_gradient_methods_and_heads():
    """halve + scaledsum(scale=2) == EW: weights scale the rows and the heads."""
    m1, m2 = make_vector_model(), make_vector_model()
    t1 = make_trainer([], model=m1)
    t2 = make_trainer([Halve(), ScaledSum(scale=2.0)], model=m2)
    b = make_batch(m1)
    t1.step(b)
    t2.step(b)
    for name, p in m2.encoder.named_parameters():
        torch.testing.assert_close(p, dict(m1.encoder.named_parameters())[name])
    for name, p in m2.heads.named_parameters():
        # heads get w_t * dL_t (0.5x) while the shared update was rescaled by the aggregator
        p0 = dict(make_vector_model().heads.named_parameters())[name]
        p1 = dict(m1.heads.named_parameters())[name]
        torch.testing.assert_close(p - p0, 0.5 * (p1 - p0))


@pytest.mark.parametrize("methods", [[], [ScaledSum()], [ScaledSum(space="representation")]])
def test_partial_labels_leave_missing_task_out(methods):
    m1, m2 = make_vector_model(), make_vector_model(tasks=("a", "c"))
    # same initial weights for the shared encoder and heads a, c
    m2.encoder.load_state_dict(m1.encoder.state_dict())
    m2.heads["a"].load_state_dict(m1.heads["a"].state_dict())
    m2.heads["c"].load_state_dict(m1.heads["c"].state_dict())
    head_b = params_of(m1.heads["b"])
    t1 = make_trainer(methods, model=m1)
    t2 = make_trainer([type(m)(m.options) for m in methods], model=m2)
    x, ys = make_batch(m1)
    ctx = t1.step((x, {"a": ys["a"], "b": None, "c": ys["c"]}))
    t2.step((x, {"a": ys["a"], "c": ys["c"]}))
    assert ctx.tasks == ("a", "c") and ctx.task_ids.tolist() == [0, 2]
    assert all(torch.equal(a, b) for a, b in zip(head_b, m1.heads["b"].parameters()))
    for p, q in zip(m1.encoder.parameters(), m2.encoder.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_batch_errors_name_the_problem():
    trainer = make_trainer([])
    x, ys = make_batch(trainer.model)
    with pytest.raises(mtoframe.BatchError, match="no target for any task"):
        trainer.step((x, {}))
    with pytest.raises(mtoframe.BatchError, match=r"unknown task\(s\) \['d'\]"):
        trainer.step((x, {**ys, "d": ys["a"]}))
    with pytest.raises(mtoframe.BatchError, match="pair"):
        trainer.step(x)
    with pytest.raises(mtoframe.BatchError, match="loss of task 'a'"):
        trainer.step((x, {**ys, "a": torch.zeros(3, 7, dtype=x.dtype)}))


def test_task_names_must_match_heads():
    model = make_vector_model()
    with pytest.raises(mtoframe.MtoError, match="do not match the model's heads"):
        mtoframe.Trainer(model, make_tasks(["a", "b"]), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_nonfinite_policies():
    trainer = make_trainer([])
    x, ys = make_batch(trainer.model)
    bad = {**ys, "b": torch.full_like(ys["b"], float("nan"))}
    with pytest.raises(mtoframe.NonFiniteLossError, match=r"step 0: task\(s\) \['b'\]"):
        trainer.step((x, bad))
    skipper = make_trainer([ScaledSum()], nonfinite="skip")
    before = params_of(skipper.model)
    ctx = skipper.step((x, bad))
    assert ctx.skipped and skipper.counters["skipped_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, skipper.model.parameters()))
    skipper.step((x, ys))
    assert all(torch.isfinite(p).all() for p in skipper.model.parameters())


def test_method_exception_names_method_and_hook():
    class Broken(mtoframe.Method):
        name = "broken"
        roles = mtoframe.Role.LOSS

        @mtoframe.hookimpl
        def on_task_losses(self, ctx):
            raise ZeroDivisionError("boom")

    trainer = make_trainer([Broken()])
    with pytest.raises(mtoframe.MethodError, match="method 'broken' failed in hook on_task_losses: ZeroDivisionError: boom"):
        trainer.step(make_batch(trainer.model))


def test_optimizer_with_nonfinite_lr_is_rejected():
    model = make_vector_model()
    with pytest.raises(mtoframe.OptionError, match="finite number"):
        mtoframe.Trainer(model, make_tasks(), optimizer=torch.optim.SGD(model.parameters(), lr=float("nan")))


def test_fit_runs_epochs_and_evaluates():
    trainer = make_trainer([])
    batches = [make_batch(trainer.model, seed=s) for s in range(4)]
    hist = trainer.fit(batches, epochs=3, val=batches[:2])
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert set(hist[-1]["val"]) == {"a", "b", "c"} and "mae" in hist[-1]["val"]["a"]
    assert sum(hist[-1]["train_loss"].values()) < sum(hist[0]["train_loss"].values())
    assert trainer.global_step == 12


@pytest.mark.parametrize("methods", [[], [ScaledSum()], [ScaledSum(space="representation")]])
def test_multi_input_batches_equal_hand_written_per_task_inputs(methods):
    """{task: (inputs, target)}: each head reads its own task's samples; no BatchNorm here, so the
    result equals running the encoder on each task's inputs separately."""
    m1, m2 = make_vector_model(), make_vector_model()
    t1 = make_trainer(methods, model=m1, lr=0.1)
    opt = torch.optim.SGD(m2.parameters(), lr=0.1)
    batches = {t: make_batch(m1, batch=4 + i, seed=10 + i) for i, t in enumerate("abc")}
    t1.step({t: (b[0], b[1][t]) for t, b in batches.items()})
    total = sum(_mse(m2.heads[t](m2.encoder(b[0])), b[1][t]) for t, b in batches.items())
    total.backward()
    opt.step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)
    with pytest.raises(mtoframe.BatchError, match="one shape per sample"):
        t1.step({"a": (torch.zeros(2, 8, dtype=torch.float64), batches["a"][1]["a"][:2]),
                 "b": (torch.zeros(2, 9, dtype=torch.float64), batches["b"][1]["b"][:2])})


def test_loss_weighting_before_a_weight_blind_aggregator_is_rejected():
    from helpers import Halve
    from mtoframe.loss_weighting import check_loss_weighting_stack

    class Blind(ScaledSum):
        name = "blind"
        ignores_loss_weights = "it normalises every row"

    class Weighting(Halve):
        def check_stack(self, stack):
            check_loss_weighting_stack(self, stack)

    with pytest.raises(mtoframe.StackError, match="'halve' before 'blind' .* meaningless: it normalises every row"):
        make_trainer([Weighting(), Blind()])
    with pytest.raises(mtoframe.StackError, match="two loss-weighting schemes"):
        make_trainer([Weighting(), type("Other", (Halve,), {"name": "other"})()])
    make_trainer([Weighting(), ScaledSum()])


def test_a_step_context_is_freed_by_reference_counting():
    """No reference cycle keeps a step's context (its gradient matrix, its graph) alive until the
    cyclic garbage collector runs."""
    import gc
    import weakref

    seen = []

    class Keep(ScaledSum):
        name = "keepref"

        @mtoframe.hookimpl
        def on_shared_grads(self, ctx):
            seen.append(weakref.ref(ctx))
            super().on_shared_grads(ctx)

    trainer = make_trainer([Keep()])
    gc.disable()
    try:
        trainer.step(make_batch(trainer.model))
        assert seen and seen[0]() is None
    finally:
        gc.enable()


def _frozen_bn_model():
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh())
    model = mtoframe.MultiTaskModel(encoder=enc, heads={t: torch.nn.Linear(6, 1) for t in "abc"}).double()
    model.encoder[1].eval()  # the user freezes the batch-norm statistics (fine-tuning)
    return model


@pytest.mark.parametrize("stack", [[], ["famo"]])
def test_a_submodule_put_in_eval_mode_stays_there(stack):
    """step, evaluate and FAMO's extra forward leave a user's module.eval() alone: its running
    statistics never move, while the rest of the model trains."""
    if stack:
        pytest.importorskip("mtoframe_famo")
    model = _frozen_bn_model()
    bn = model.encoder[1]
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    trainer = make_trainer(stack, model=model)
    for step in range(3):
        trainer.step(make_batch(model, seed=step))
        trainer.evaluate([make_batch(model, seed=10 + step)])
    assert model.training and model.heads["a"].training and not bn.training
    assert int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_mean, mean0) and torch.equal(bn.running_var, var0)
    assert not torch.equal(model.encoder[0].weight, _frozen_bn_model().encoder[0].weight)  # it did train


def test_step_puts_a_model_left_in_eval_mode_back_in_training():
    model = make_vector_model()
    trainer = make_trainer([], model=model)
    model.eval()
    trainer.step(make_batch(model))
    assert all(m.training for m in model.modules())
