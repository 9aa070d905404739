"""The engine's per-task representation gradients ``∂L_t/∂Z`` (the saliency).

They are taken in one autograd call at the heads' aliases of ``Z`` and chained through the
Jacobian of any loss transform, so each head is traversed once instead of ``T`` times; these tests
pin that down against the direct per-task ``autograd.grad(losses[t], z)``, first and second order.
"""

from __future__ import annotations

import pytest
import torch
from helpers import ScaledSum
from torch import nn

from mtoframe import Method, MultiTaskModel, Role, hookimpl
from mtoframe.testing import make_batch, make_conv_model, make_trainer, make_vector_model


class _Count(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, counter, name):  # type: ignore[override]
        ctx.counter, ctx.name = counter, name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        ctx.counter[ctx.name] = ctx.counter.get(ctx.name, 0) + 1
        return g, None, None


class CountBackward(nn.Module):
    """Identity that counts how often autograd runs its backward (one head traversal each)."""

    def __init__(self, counter: dict, name: str) -> None:
        super().__init__()
        self.counter, self.name = counter, name

    def forward(self, x):
        return _Count.apply(x, self.counter, self.name)


def counted_conv_model(counter: dict) -> MultiTaskModel:
    model = make_conv_model()
    for t, head in list(model.heads.items()):
        model.heads[t] = nn.Sequential(CountBackward(counter, t), head)
    return model


class SaliencyProbe(Method):
    """Loss method that compares the engine's saliency with the direct per-task loop, and can
    first replace the losses by a transform."""

    name = "saliencyprobe"
    roles = Role.LOSS

    def __init__(self, model: MultiTaskModel, transform=None, *, differentiable: bool = False) -> None:
        super().__init__()
        self.model, self.transform, self.differentiable = model, transform, differentiable
        self.checked = 0

    @hookimpl
    def on_task_losses(self, ctx):
        if self.transform is not None:
            ctx.losses = self.transform(ctx)
        d = self.differentiable
        s = ctx.rep_grads(differentiable=d)
        ref = torch.stack([torch.autograd.grad(ctx.losses[t], ctx.z, retain_graph=True, create_graph=d)[0]
                           for t in range(ctx.num_tasks)])
        torch.testing.assert_close(s, ref, rtol=1e-12, atol=1e-14)
        if d:  # the second-order path: gradients of a function of the saliency agree too
            params = list(self.model.parameters())

            def f(x):
                return (x**2).sum() + (x[0] * x[-1]).sum() * 3.0

            got = torch.autograd.grad(f(s), params, retain_graph=True, allow_unused=True)
            want = torch.autograd.grad(f(ref), params, retain_graph=True, allow_unused=True)
            assert any(g is not None and g.abs().sum() > 0 for g in got)
            for a, b in zip(got, want, strict=True):
                if a is None or b is None:
                    assert (a is None or not a.any()) and (b is None or not b.any())
                else:
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        self.checked += 1


TRANSFORMS = {
    "none": None,
    "log": lambda ctx: torch.log(ctx.losses + 1e-8),
    # mixes tasks: J is not diagonal
    "mixing": lambda ctx: ctx.losses + 0.5 * ctx.losses.roll(1) * ctx.losses[0],
    # reads a prediction directly, outside the raw losses: the engine must fall back
    "reads-predictions": lambda ctx: ctx.losses + (ctx.predictions[ctx.tasks[0]] ** 2).mean(),
}


def make_many_task_model():
    from mtoframe.gradients import BATCHED_MIN_TASKS

    return make_vector_model(tasks=[f"t{i}" for i in range(BATCHED_MIN_TASKS + 1)])


@pytest.mark.parametrize("make_model", [make_vector_model, make_conv_model, make_many_task_model],
                         ids=["vector", "conv", "many-tasks"])
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("differentiable", [False, True], ids=["plain", "create_graph"])
def test_saliency_equals_per_task_autograd(make_model, transform, differentiable):
    model = make_model()
    probe = SaliencyProbe(model, TRANSFORMS[transform], differentiable=differentiable)
    trainer = make_trainer([probe, ScaledSum(space="representation")], model=model)
    for seed in (1, 2):
        trainer.step(make_batch(model, seed=seed))
    assert probe.checked == 2


class LogLosses(Method):
    name = "loglosses"
    roles = Role.LOSS

    @hookimpl
    def on_task_losses(self, ctx):
        ctx.losses = torch.log(ctx.losses)


@pytest.mark.parametrize("transform", [False, True], ids=["raw", "log"])
@pytest.mark.parametrize("space", ["params", "representation"])
def test_per_task_gradients_traverse_each_head_once(space, transform):
    counter: dict[str, int] = {}
    model = counted_conv_model(counter)
    trainer = make_trainer([LogLosses()] * transform + [ScaledSum(space=space)], model=model)
    ctx = trainer.step(make_batch(model))
    # grad of one element of the stacked losses would run every head (the others with zeros): 3 each
    assert counter == {"a": 1, "b": 1, "c": 1}
    assert ctx.grads.shape[0] == 3


def test_hooks_on_z_see_the_single_backward_and_head_inputs_the_per_task_gradients():
    model = make_conv_model()
    calls = {"z": 0, "heads": 0}

    class Hooks(Method):
        name = "hooks"
        roles = Role.LOSS

        @hookimpl
        def on_task_losses(self, ctx):
            ctx.z.register_hook(lambda g: calls.__setitem__("z", calls["z"] + 1))
            for a in ctx.head_inputs:
                a.register_hook(lambda g: calls.__setitem__("heads", calls["heads"] + 1))

    make_trainer([Hooks(), ScaledSum(space="representation")], model=model).step(make_batch(model))
    # per-task gradients (3 aliases, one call) never reach z; the update's backward reaches it once
    assert calls == {"z": 1, "heads": 3}


@pytest.mark.parametrize("transform", [False, True], ids=["raw", "log"])
@pytest.mark.parametrize("many", [False, True], ids=["3-tasks", "many-tasks"])
def test_param_space_rows_equal_per_task_autograd(transform, many, monkeypatch):
    """Rows equal ``∂L_t/∂θ_shared`` taken directly. With few tasks they come from each task's own
    loss scalar, or (transformed losses) from the saliency by one encoder VJP per task; from
    ``BATCHED_MIN_TASKS`` tasks on, from the saliency by one vmapped (``is_grads_batched``) VJP,
    and the transform's Jacobian is one vmapped call too."""
    from mtoframe import gradients

    names = [f"t{i}" for i in range(gradients.BATCHED_MIN_TASKS + 2)] if many else ["a", "b", "c"]
    model = make_vector_model(tasks=names) if many else make_conv_model()
    seen: dict[str, torch.Tensor] = {}
    calls = {"batched": 0, "grad": 0}
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        calls["batched"] += bool(kwargs.get("is_grads_batched"))
        return grad(*args, **kwargs)

    class Rows(Method):
        name = "rows"
        roles = Role.AGGREGATOR
        grad_space = "params"

        @hookimpl
        def on_shared_grads(self, ctx):
            monkeypatch.setattr(torch.autograd, "grad", counting_grad)
            rows = ctx.grads
            monkeypatch.setattr(torch.autograd, "grad", grad)
            shared = list(model.shared_parameters())
            ref = torch.stack([torch.cat([g.reshape(-1) for g in grad(
                ctx.losses[t], shared, retain_graph=True)]) for t in range(ctx.num_tasks)])
            seen["got"], seen["want"] = rows, ref
            ctx.set_update(rows.sum(0))

    make_trainer([LogLosses()] * transform + [Rows()], model=model).step(make_batch(model))
    torch.testing.assert_close(seen["got"], seen["want"], rtol=1e-12, atol=1e-14)
    if many:  # the saliency (one call), the transform's Jacobian (one vmapped call), one vmapped VJP
        assert (calls["batched"], calls["grad"]) == (1 + transform, 2 + transform)
    else:
        assert calls["batched"] == 0
