"""The conformance suite passes well-behaved methods and catches each kind of broken one."""

from __future__ import annotations

import attrs
import pytest
import torch

from mtoframe import Method, Role, hookimpl
from mtoframe.options import in_range
from mtoframe.testing.conformance import CHECKS, ConformanceError, check_method, conformance_tests

test_conformance_ew = conformance_tests("ew")


@attrs.frozen(kw_only=True)
class JitterOptions:
    scale: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    space: str = "params"


class Jitter(Method):
    """A seeded random-weighting aggregator with a step counter: exercises generator state."""

    name = "jitter"
    summary = "random positive weights"
    paper = "test fixture"
    roles = Role.AGGREGATOR
    Options = JitterOptions

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.reset()

    def reset(self):
        self.gen = torch.Generator().manual_seed(0)
        self.calls = 0

    @hookimpl
    def on_shared_grads(self, ctx):
        w = 1 + self.options.scale * torch.rand(ctx.num_tasks, generator=self.gen, dtype=torch.float64)
        self.calls += 1
        ctx.set_update(w.to(ctx.grads.dtype) @ ctx.grads)

    def state_dict(self):
        return {"gen": self.gen.get_state(), "calls": self.calls}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])
        self.calls = int(state["calls"])


class Halve(Method):
    """A transform halving every gradient row."""

    name = "halve"
    summary = "halve the gradients"
    paper = "test fixture"
    roles = Role.TRANSFORM

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.grads = ctx.grads * 0.5


class Decay(Method):
    """A loss weighting whose weights decay with the step count (kept in state)."""

    name = "decay"
    summary = "decaying loss weights"
    paper = "test fixture"
    roles = Role.LOSS

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.t = torch.zeros(())

    @hookimpl
    def on_task_losses(self, ctx):
        ctx.weights = ctx.weights / (1 + 0.1 * self.t)

    @hookimpl
    def on_after_step(self, ctx):
        self.t = self.t + 1

    def state_dict(self):
        return {"t": self.t.clone()}

    def load_state_dict(self, state):
        self.t = state["t"].clone()


test_conformance_jitter_repr_space = conformance_tests(Jitter, space="representation")


@pytest.mark.parametrize("cls", [Jitter, Halve, Decay])
def test_good_methods_pass(cls):
    report = check_method(cls)
    assert report.ok
    gradient = cls is not Decay
    assert {o.check for o in report.outcomes if o.status == "skipped"} == (set() if gradient else {"aggregate", "single_task", "nonfinite"})


# -- broken variants: each must fail the named check, and only the checks it breaks ------------


class ForgetsState(Jitter):
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class GeneratorInState(Jitter):
    def state_dict(self):
        return {"gen": self.gen}


class NoHookimpl(Halve):
    def on_shared_grads(self, ctx):  # forgot @hookimpl
        ctx.grads = ctx.grads * 0.5


class NanOnZero(Method):
    name = "nanonzero"
    summary = "normalise rows without an epsilon"
    paper = "test fixture"
    roles = Role.AGGREGATOR

    @hookimpl
    def on_shared_grads(self, ctx):
        g = ctx.grads
        ctx.set_update((g / g.norm(dim=1, keepdim=True)).sum(0))


class WrongDtype(Method):
    name = "wrongdtype"
    summary = "returns float64 always"
    paper = "test fixture"
    roles = Role.AGGREGATOR

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.set_update(ctx.grads.sum(0).double())


class Unseeded(Jitter):
    def reset(self):
        super().reset()
        self.gen.seed()  # fresh entropy: two instances differ


class Ascends(Method):
    name = "ascends"
    summary = "gradient ascent"
    paper = "test fixture"
    roles = Role.AGGREGATOR

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.set_update(-ctx.grads.sum(0))


class HiddenRepr(Jitter):
    def __repr__(self):
        return "Jitter()"


class FakeTransform(Halve):
    """Declares itself a transform but aggregates: breaks stacks with a real aggregator."""

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.set_update(ctx.grads.sum(0))


@pytest.mark.parametrize(
    ("cls", "check", "needle"),
    [
        (ForgetsState, "state_dict", "round trip differs"),
        (GeneratorInState, "state_dict", "Generator"),
        (NoHookimpl, "declarations", "not decorated"),
        (NanOnZero, "aggregate", "all-zero-T3: non-finite"),
        (WrongDtype, "aggregate", "float32-T3"),
        (Unseeded, "determinism", "differ"),
        (Ascends, "trainer", "did not decrease"),
        (HiddenRepr, "repr", "scale=0.1"),
        (FakeTransform, "stacking", "not an aggregator"),
    ],
)
def test_broken_methods_fail_the_right_check(cls, check, needle):
    report = check_method(cls, raise_on_failure=False)
    failed = {o.check: o.message for o in report.failed}
    assert check in failed, str(report)
    assert needle in failed[check]


def test_check_method_raises_with_full_report():
    with pytest.raises(ConformanceError, match=r"failed  repr"):
        check_method(HiddenRepr, checks=["repr", "declarations"])


def test_unknown_check_is_rejected():
    with pytest.raises(ValueError, match="unknown conformance check"):
        check_method("ew", checks=["nope"])


def test_checks_listed():
    assert CHECKS == ("declarations", "repr", "aggregate", "single_task", "state_dict", "partial_labels", "nonfinite",
                      "determinism", "trainer", "stack", "stacking")


class TrainerOnly(Method):
    """Halves the gradients only when the batch's inputs are on the context (as only the Trainer
    puts them): a method that would train differently in an own loop."""

    name = "traineronly"
    summary = "halve the gradients inside a Trainer"
    paper = "test fixture"
    roles = Role.TRANSFORM

    @hookimpl
    def on_shared_grads(self, ctx):
        if ctx.inputs is not None:
            ctx.grads = ctx.grads * 0.5


def test_stack_check_catches_a_method_that_differs_in_an_own_loop():
    assert check_method(Halve, checks=["stack"]).ok
    with pytest.raises(ConformanceError, match=r"failed  stack: .*step 0: the Stack's \.grad of encoder\.0\.weight differs"):
        check_method(TrainerOnly, checks=["stack"])


def test_fixture_from_pytest_plugin(method_conformance):
    assert method_conformance(Halve, checks=["declarations", "aggregate"]).ok
