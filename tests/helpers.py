"""Test-only methods used by several core tests."""

from __future__ import annotations

import attrs
import torch

from mtoframe import Method, Role, hookimpl
from mtoframe.options import in_range, one_of


@attrs.frozen(kw_only=True)
class RecorderOptions:
    tag: str = "r"


class Recorder(Method):
    """Appends ``(tag, hook)`` to a shared log on every hook."""

    name = "recorder"
    roles = Role.LOSS
    Options = RecorderOptions

    def __init__(self, log: list, **kw):
        super().__init__(**kw)
        self.log = log

    @hookimpl
    def on_representation(self, ctx):
        self.log.append((self.options.tag, "on_representation"))

    @hookimpl
    def on_task_losses(self, ctx):
        self.log.append((self.options.tag, "on_task_losses"))

    @hookimpl
    def on_after_step(self, ctx):
        self.log.append((self.options.tag, "on_after_step"))


def named_recorder(name: str, log: list) -> Recorder:
    cls = type(f"Recorder_{name}", (Recorder,), {"name": name})
    return cls(log, tag=name)


@attrs.frozen(kw_only=True)
class SumOptions:
    space: str = attrs.field(default="params", validator=one_of(("params", "representation")))
    scale: float = attrs.field(default=1.0, validator=in_range(0.0))


class ScaledSum(Method):
    """Aggregator: ``scale · Σ_t g_t`` (EW when scale = 1)."""

    name = "scaledsum"
    roles = Role.AGGREGATOR
    Options = SumOptions

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.set_update(self.options.scale * ctx.grads.sum(0))


class Negate(Method):
    """Transform: flips the sign of the first task's row."""

    name = "negatefirst"
    roles = Role.TRANSFORM

    @hookimpl
    def on_shared_grads(self, ctx):
        g = ctx.grads.clone()
        g[0] = -g[0]
        ctx.grads = g


class Halve(Method):
    """Loss weighting: every weight halved."""

    name = "halve"
    roles = Role.LOSS

    @hookimpl
    def on_task_losses(self, ctx):
        ctx.weights = ctx.weights * 0.5


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@attrs.frozen(kw_only=True)
class RandomOptions:
    seed: int = 0


class RandomWeights(Method):
    """Loss weighting with fresh random weights each step and an EMA of them (state + RNG)."""

    name = "randomweights"
    roles = Role.LOSS
    Options = RandomOptions

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gen = torch.Generator().manual_seed(self.options.seed)
        self.ema: torch.Tensor | None = None

    @hookimpl
    def on_task_losses(self, ctx):
        w = torch.softmax(torch.randn(ctx.num_tasks, generator=self.gen, dtype=torch.float64), 0)
        self.ema = w if self.ema is None else 0.9 * self.ema + 0.1 * w
        ctx.weights = ctx.weights * (w + self.ema).to(ctx.weights.dtype)

    def state_dict(self):
        return {"gen": self.gen.get_state(), "ema": self.ema}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])
        self.ema = state["ema"]
