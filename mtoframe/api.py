"""Functional API: create methods by name, list them, aggregate a bare gradient matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .context import StepContext
from .errors import MtoError, OptionError
from .method import GRADIENT_ROLES, Method
from .registry import get_registry
from .scaling import checked_inputs, rescaled



def available() -> list[str]:
    """Names of the installed methods (built-in and from plugins), sorted."""
    return get_registry().names()


def create(name: str, /, **options: Any) -> Method:
    """Build a configured method: ``create("cagrad", c=0.5)``."""
    info = get_registry().get(name)
    return info.cls(**options)


def as_method(spec: Any) -> Method:
    """A method from a name, a ``(name, options)`` pair or a method object."""
    if isinstance(spec, Method):
        return spec
    if isinstance(spec, str):
        return create(spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return create(spec[0], **spec[1])
    raise OptionError(
        f"a method must be a name, a (name, options-dict) pair or a Method object; got {spec!r}"
    )


def aggregate(method: Method | str, grads: Tensor, losses: Tensor | None = None) -> Tensor:
    """Run a gradient method on a bare ``T×P`` matrix and return the ``P`` update.

    Only the method's ``on_shared_grads`` runs, on a context whose rows are ``grads`` (taken to
    be the gradients of ``losses`` when given). A transform without aggregation returns the sum
    of the transformed rows, which is what the trainer would apply.

    ``grads`` must have at least one row and column; an integer matrix is promoted to the default
    floating dtype. A matrix whose largest entry is outside ``[2^-32, 2^32]`` is rescaled by a
    power of two for every method that declares its :attr:`~mtoframe.Method.scale_degree`, and
    the update scaled back (:mod:`mtoframe.scaling`), so 1e30 or 1e-30 gradients give the
    method's own answer instead of an overflowed Gram matrix.
    """
    m = as_method(method)
    if not m.roles & GRADIENT_ROLES:
        raise MtoError(f"method {m.name!r} is not a gradient method; aggregate() needs one of: "
                       + ", ".join(n for n in available() if get_registry().get(n).cls.roles & GRADIENT_ROLES))
    grads, losses = checked_inputs(grads, losses)
    return rescaled(m, grads, lambda g: _run_on_grads(m, g, losses))


def _run_on_grads(m: Method, grads: Tensor, losses: Tensor | None) -> Tensor:
    t = grads.shape[0]
    ctx = StepContext(tasks=tuple(f"task{i}" for i in range(t)), losses=losses, space=m.grad_space,
                      device=grads.device)
    ctx._weights = torch.ones(t, dtype=grads.dtype, device=grads.device)
    ctx.grads = grads
    hook = getattr(m, "on_shared_grads", None)
    if hook is not None:
        hook(ctx=ctx)
    return ctx.update if ctx.update is not None else ctx.grads.sum(0)
