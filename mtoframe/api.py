"""Functional API: create methods by name, list them, aggregate a bare gradient matrix."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .context import StepContext
from .errors import MtoError, OptionError
from .hooks import HookDispatcher
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


def aggregate(method: Method | str, grads: Tensor, losses: Tensor | None = None, *,
              task_ids: Sequence[int] | Tensor | None = None,
              all_tasks: int | Sequence[str] | None = None) -> Tensor:
    """Run a gradient method on a bare ``T×P`` matrix and return the ``P`` update.

    Only the method's ``on_shared_grads`` runs, on a context whose rows are ``grads`` (taken to
    be the gradients of ``losses`` when given). A transform without aggregation returns the sum
    of the transformed rows, which is what the trainer would apply.

    ``grads`` must have at least one row and column; an integer matrix is promoted to the default
    floating dtype. A matrix whose largest entry is outside ``[2^-32, 2^32]`` is rescaled by a
    power of two for every method that declares its :attr:`~mtoframe.Method.scale_degree`, and
    the update scaled back (:mod:`mtoframe.scaling`), so 1e30 or 1e-30 gradients give the
    method's own answer instead of an overflowed Gram matrix.

    Partial labels, as the trainer runs them: ``all_tasks`` is the full task list (names, or
    their number) and ``task_ids[i]`` the position in it of the task of row ``i``, so a stateful
    method sees the ``ctx.task_ids`` and ``ctx.all_tasks`` it would see on a batch missing the
    other tasks. Without them every row is present: ``task_ids = range(T)``.
    """
    m = as_method(method)
    dispatcher = _DISPATCHERS.get(m)  # a method already run here is known to be a gradient method
    if dispatcher is None and not m.roles & GRADIENT_ROLES:
        raise MtoError(f"method {m.name!r} is not a gradient method; aggregate() needs one of: "
                       + ", ".join(n for n in available() if get_registry().get(n).cls.roles & GRADIENT_ROLES))
    grads, losses = checked_inputs(grads, losses)
    tasks = _present_tasks(grads.shape[0], task_ids, all_tasks)
    if dispatcher is None:
        # the method's hook dispatch, as a Stack runs it (built once per method object)
        dispatcher = _DISPATCHERS[m] = HookDispatcher([(m.name, m)])
    return rescaled(m, grads, lambda g: _run_on_grads(m, dispatcher, g, losses, tasks))


def _run_on_grads(m: Method, dispatcher: HookDispatcher, grads: Tensor, losses: Tensor | None,
                  tasks: tuple[tuple[str, ...], tuple[str, ...]]) -> Tensor:
    present, everyone = tasks
    ctx = StepContext(tasks=present, all_tasks=everyone, losses=losses, grad_space=m.grad_space, device=grads.device,
                      dtype=grads.dtype)
    ctx.grads = grads
    dispatcher.call("on_shared_grads", None, ctx=ctx)
    return ctx.update if ctx.update is not None else ctx.grads.sum(0)


_DISPATCHERS: weakref.WeakKeyDictionary[Method, HookDispatcher] = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=64)
def _default_names(t: int) -> tuple[str, ...]:
    return tuple(f"task{i}" for i in range(t))


def _present_tasks(t: int, task_ids: Sequence[int] | Tensor | None,
                   all_tasks: int | Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(tasks, all_tasks)`` names of :func:`aggregate`'s context for ``T`` rows."""
    if all_tasks is None:
        if task_ids is not None:
            raise MtoError("task_ids needs all_tasks= (the full task list, or its length) to index into")
        names = _default_names(t)
        return names, names
    if isinstance(all_tasks, int) and not isinstance(all_tasks, bool):
        names = _default_names(all_tasks)
    elif (isinstance(all_tasks, Sequence) and not isinstance(all_tasks, str)
          and all(isinstance(n, str) for n in all_tasks)):
        names = tuple(all_tasks)
    else:
        raise MtoError(f"all_tasks must be a number of tasks or a sequence of task names, got {all_tasks!r}")
    if len(set(names)) != len(names) or not names:
        raise MtoError(f"all_tasks must name at least one task, each once; got {list(names)}")
    if task_ids is None:
        if len(names) != t:
            raise MtoError(f"grads has {t} rows but all_tasks has {len(names)} tasks: pass task_ids= to say "
                           "which tasks the rows belong to")
        return names, names
    ids = task_ids.tolist() if isinstance(task_ids, Tensor) else list(task_ids)
    if (len(ids) != t or len(set(ids)) != t
            or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(names) for i in ids)):
        raise MtoError(f"task_ids must be {t} distinct positions in all_tasks (0 to {len(names) - 1}), one per "
                       f"row of grads; got {ids}")
    return tuple(names[i] for i in ids), names
