"""Shared test helpers of the loss-weighting plugin (a uniquely named module: several test
folders are collected together in tox's `all` env)."""

import torch

from mtoframe import Method, Role, hookimpl


class Identity(Method):
    """Test-only gradient transform: leaves the T×P rows unchanged (forces the per-task path)."""

    name = "identitytransform"
    roles = Role.TRANSFORM

    @hookimpl
    def on_shared_grads(self, ctx):
        self.rows = ctx.grads.clone()
        ctx.grads = ctx.grads * 1.0


class Observer:
    """Trainer observer plugin: records what the stack left in the context of every step."""

    name = "observer"

    def __init__(self, fn=None):
        self.records = []
        self.fn = fn

    @hookimpl
    def on_task_losses(self, ctx):
        rec = {
            "epoch": ctx.epoch,
            "step": ctx.step,
            "weights": ctx.weights.detach().clone(),
            "losses": ctx.losses.detach().clone(),
            "raw": ctx.raw_losses.detach().clone(),
            "extra": sorted(ctx.extra_losses),
        }
        if self.fn is not None:
            rec.update(self.fn(ctx))
        self.records.append(rec)


def loader(model, n=3, batch=8):
    from mtoframe.testing import make_batch

    return [make_batch(model, batch=batch, seed=10 + i) for i in range(n)]


def mse(pred, target):
    return ((pred - target) ** 2).mean()


D64 = torch.float64
