"""Mistakes the trainer refuses instead of silently accepting: a stack listed out of order, an
optimiser over foreign parameters, a hook without ``@hookimpl``, a hook that breaks what later
steps rely on, and batches that would train on something other than what was meant. All checks
read shapes, dtypes and flags only: none synchronises with the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BatchError, MethodError, OptionError, StackError
from .method import GRADIENT_ROLES, Method, Role
from .registry import HOOK_NAMES


def check_stack_order(stack: Sequence[Method]) -> None:
    """Loss-level methods act before any gradient exists; listing one after a gradient method
    would run in another order than written."""
    names = [m.name for m in stack]
    for i, m in enumerate(stack):
        if m.roles & Role.LOSS and not m.roles & GRADIENT_ROLES:
            before = [o.name for o in stack[:i] if o.roles & GRADIENT_ROLES]
            if before:
                fixed = [n for n in names if n not in before] + [n for n in names if n in before]
                raise StackError(f"loss method {m.name!r} is listed after gradient method(s) {before} in {names}; "
                                 f"it acts on the losses, before any gradient exists: write {fixed}")


def check_hookimpls(members: Sequence[tuple[str, object]]) -> None:
    """A hook-named method without ``@mtoframe.hookimpl`` is never called: refuse it."""
    for name, obj in members:
        for hook in HOOK_NAMES:
            fn = getattr(type(obj), hook, None)
            if callable(fn) and not hasattr(fn, "mtoframe_impl"):
                raise StackError(f"{name!r} defines {hook} without @mtoframe.hookimpl, so the trainer would never call "
                                 "it; decorate it (or rename it if it is not a hook)")


def check_optimizer_params(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    own = {id(p) for p in model.parameters()}
    foreign = [tuple(p.shape) for g in optimizer.param_groups for p in g["params"] if id(p) not in own]
    if foreign:
        raise OptionError(f"the optimiser holds {len(foreign)} parameter(s) that are not the model's (shapes "
                          f"{foreign[:4]}{' ...' if len(foreign) > 4 else ''}): the model would not train; build it "
                          "over model.parameters() (methods add their own parameters themselves)")


def hook_state(ctx: Any) -> tuple[bool, bool]:
    """What a hook must not undo: whether ``ctx.z`` carries gradient, whether no update is set."""
    return isinstance(ctx.z, Tensor) and ctx.z.requires_grad, ctx.update is None


def check_hook_effects(hook: str, name: str, obj: object, ctx: Any, before: tuple[bool, bool]) -> None:
    z_grad, no_update = before
    if hook == "on_representation" and z_grad and not (isinstance(ctx.z, Tensor) and ctx.z.requires_grad):
        raise MethodError(f"method {name!r} detached ctx.z in hook on_representation: the encoder would get no "
                          "gradient and stop training; replace ctx.z by a differentiable function of it")
    if (hook == "on_shared_grads" and no_update and ctx.update is not None and isinstance(obj, Method)
            and not obj.roles & Role.AGGREGATOR):
        raise MethodError(f"method {name!r} called ctx.set_update in hook on_shared_grads but is not an aggregator "
                          f"(roles {obj.roles}); a transform edits ctx.grads, only an aggregator (Role.AGGREGATOR, "
                          "listed last) sets the update")


def check_inputs(inputs: Any, model: nn.Module) -> None:
    """An empty batch, or floating inputs of another dtype than the encoder's parameters."""
    if not isinstance(inputs, Tensor):
        return
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise BatchError(f"the batch's inputs are empty (shape {tuple(inputs.shape)}); a step needs at least one sample")
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    if inputs.is_floating_point() and ref is not None and inputs.dtype != ref.dtype:
        raise BatchError(f"inputs are {inputs.dtype} but the model's parameters are {ref.dtype}; convert the inputs "
                         f"(x.to({ref.dtype})) or the model")


def check_target(task: str, pred: Any, target: Any) -> None:
    """Floating targets must match the prediction's shape or broadcast *into* it: (6,) against
    (6, 1) broadcasts to (6, 6) and silently compares every pair."""
    if not (isinstance(pred, Tensor) and isinstance(target, Tensor)):
        return
    if pred.shape == target.shape or not (pred.is_floating_point() and target.is_floating_point()):
        return
    if target.numel() == 0:
        raise BatchError(f"target of task {task!r} is empty (shape {tuple(target.shape)})")
    try:
        shape = torch.broadcast_shapes(pred.shape, target.shape)
    except RuntimeError:
        return  # the loss itself names the mismatch
    if shape != pred.shape:
        raise BatchError(f"target of task {task!r} has shape {tuple(target.shape)} and its prediction "
                         f"{tuple(pred.shape)}: they only broadcast (to {tuple(shape)}), which pairs every sample "
                         f"with every other; reshape the target to {tuple(pred.shape)}")


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """An optimiser whose groups all have a finite learning rate."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise OptionError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    for i, g in enumerate(optimizer.param_groups):
        lr = g.get("lr")
        if isinstance(lr, (int, float)) and not (lr == lr and abs(lr) != float("inf")):
            raise OptionError(f"learning rate of optimizer group {i} must be a finite number, got {lr!r}")
