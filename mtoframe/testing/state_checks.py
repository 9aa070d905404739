"""Conformance checks of a method's per-task state (registered in :mod:`.conformance`).

``partial_labels``
    On five tasks with ``t0`` and ``t3`` missing from every batch, two trainers that differ only
    in where ``t0`` sits in their task list (first, then last, so every present task's
    ``ctx.task_ids`` entry differs) end with the same state up to reordering every task
    dimension accordingly: per-task state follows ``ctx.task_ids``, not the row's position in
    the batch; and no state has the batch's number of tasks where it should have five. Gradient
    methods are also checked the same way through :func:`mtoframe.aggregate` with ``task_ids`` /
    ``all_tasks``. The state keeps its shapes when every task comes back (sized over
    ``ctx.all_tasks`` from the first batch), and a step without ``t0`` and ``t2`` leaves their
    entries unchanged (unless the method says why they move: ``absent_state_moves``).
``nonfinite``
    (gradient methods) in a trainer with ``nonfinite="skip"``, a step whose gradients are NaN
    (then +inf) is skipped, never raised (a method may refuse such a matrix with an error: the
    trainer then applies its policy as for a non-finite update), and leaves the floating-point
    state bit-identical (counters and generator states may advance: they cannot carry a NaN);
    the next clean step gives a finite update that is applied.

A *task dimension* of a state tensor is one of length five, the number of tasks here; no other
dimension of the tiny test models has that length. Numbers and lists of numbers in a state are
compared as tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..api import aggregate
from ..errors import MtoError
from ..trainer import Trainer
from ._common import Factory, fail, is_gradient, params, require_gradient, space_variants
from .factories import PoisonGradient, make_batch, make_tasks, make_trainer, make_vector_model

ALL = ("t0", "t1", "t2", "t3", "t4")
#: the same tasks with t0 last: every task's position in the list changes
ROTATED = ALL[1:] + ALL[:1]
#: the tasks of the partial batches: t0 and t3 missing, three left (no dimension of the tiny
#: models has length three either, so state sized by the batch shows)
_PRESENT = ("t1", "t2", "t4")


def _leaves(state: Any, where: str = "state") -> dict[str, Tensor]:
    """``{path: tensor}`` of every number in a state_dict."""
    if isinstance(state, Tensor):
        return {where: state.detach().clone()}
    if isinstance(state, (bool, int, float)):
        return {where: torch.tensor(state, dtype=torch.float64 if isinstance(state, float) else None)}
    out: dict[str, Tensor] = {}
    if isinstance(state, Mapping):
        for k, v in state.items():
            out.update(_leaves(v, f"{where}[{k!r}]"))
    elif isinstance(state, (list, tuple)):
        if state and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in state):
            floats = any(isinstance(v, float) for v in state)
            return {where: torch.tensor(list(state), dtype=torch.float64 if floats else None)}
        for i, v in enumerate(state):
            out.update(_leaves(v, f"{where}[{i}]"))
    return out


def _task_dims(t: Tensor) -> list[int]:
    return [d for d, n in enumerate(t.shape) if n == len(ALL)]


def _rotated(t: Tensor) -> Tensor:
    """``t`` as a trainer listing the tasks in ``ROTATED`` order would store it."""
    perm = torch.tensor([ALL.index(n) for n in ROTATED], device=t.device)
    for d in _task_dims(t):
        t = t.index_select(d, perm)
    return t


def _close(a: Tensor, b: Tensor, atol: float) -> bool:
    """Equal up to the rounding of reductions taken in another task order."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    rtol = 1e-9 if a.dtype == torch.float64 else 1e-5
    return torch.allclose(a, b, rtol=rtol, atol=max(atol, 1e-12), equal_nan=True)


def _identical(a: Tensor, b: Tensor | None) -> bool:
    return b is not None and a.shape == b.shape and a.dtype == b.dtype and bool(
        ((a == b) | (a.isnan() & b.isnan())).all())


def _compare_rotated(first: Any, second: Any, how: str, atol: float) -> None:
    a, b = _leaves(first), _leaves(second)
    if a.keys() != b.keys():
        fail(f"{how}: the state has keys {sorted(a)} with t0 first but {sorted(b)} with t0 last")
    for k, v in a.items():
        if not _close(_rotated(v), b[k], atol):
            dims = _task_dims(v)
            fail(f"{how}: {k} (shape {tuple(v.shape)}, task dimension(s) {dims}) is not the same state with the "
                 "tasks reordered: per-task state must be indexed by ctx.task_ids (positions in ctx.all_tasks), "
                 "not by a task's row in the batch")


def _check_sized_by_all_tasks(state: Any, where: str) -> None:
    for k, v in _leaves(state).items():
        if len(_PRESENT) in v.shape and not _task_dims(v):
            fail(f"{where}: {k} has shape {tuple(v.shape)} after batches with {len(_PRESENT)} of the {len(ALL)} tasks: "
                 "size per-task state by len(ctx.all_tasks) (or the trainer's tasks), not by the tasks of a batch")


def _trainer(factory: Factory, over: dict[str, Any], order: tuple[str, ...], model: Any) -> tuple[Any, Trainer]:
    m = factory(**over)
    return m, Trainer(model, make_tasks(order), [m], optimizer=torch.optim.SGD(model.parameters(), lr=0.02))


def _rotation_in_trainer(factory: Factory, over: dict[str, Any], atol: float) -> None:
    where = f"trainer{' ' + str(over) if over else ''}"
    torch.manual_seed(0)
    model = make_vector_model(tasks=ALL)
    batches = [make_batch(model, seed=300 + i, tasks=_PRESENT) for i in range(3)]
    runs = []
    for order in (ALL, ROTATED):
        torch.manual_seed(1)
        m, t = _trainer(factory, over, order, copy.deepcopy(model))
        for b in batches:
            t.step(b)
        runs.append((m, t))
    (ma, ta), (mb, _) = runs
    _check_sized_by_all_tasks(ma.state_dict(), where)
    _compare_rotated(ma.state_dict(), mb.state_dict(), f"{where}, 3 steps without t0 and t3", atol)
    shapes = {k: v.shape for k, v in _leaves(ma.state_dict()).items()}
    ta.step(make_batch(ta.model, seed=309))  # every task present again
    back = {k: v.shape for k, v in _leaves(ma.state_dict()).items()}
    if back != shapes:
        fail(f"{where}: the state changed shape when t0 first appeared ({shapes} -> {back}); size per-task "
             "state by len(ctx.all_tasks) (or the trainer's tasks) on first use, not by the tasks of the first batch")


def _absent_untouched(factory: Factory, over: dict[str, Any]) -> None:
    where = f"trainer{' ' + str(over) if over else ''}"
    absent = (0, 2)
    torch.manual_seed(0)
    model = make_vector_model(tasks=ALL)
    m, t = _trainer(factory, over, ALL, model)
    for i in range(2):
        t.step(make_batch(model, seed=310 + i))
    before = _leaves(m.state_dict())
    t.step(make_batch(model, seed=312, tasks=[n for i, n in enumerate(ALL) if i not in absent]))
    after = _leaves(m.state_dict())
    for k, v in before.items():
        dims = _task_dims(v)
        if not dims:
            continue
        w = after.get(k)
        if w is None or w.shape != v.shape:
            fail(f"{where}: {k} changed shape or vanished on a step without t0 and t2")
        mask = torch.zeros(v.shape, dtype=torch.bool)
        for d in dims:
            rows = torch.zeros(len(ALL), dtype=torch.bool)
            rows[list(absent)] = True
            mask |= rows.view([-1 if i == d else 1 for i in range(v.dim())]).expand(v.shape)
        if not _identical(v[mask.to(v.device)], w[mask.to(w.device)]):
            fail(f"{where}: a step without tasks t0 and t2 changed their entries of {k} (task dimension(s) {dims}); "
                 "a task absent from the batch must keep its state (update only the rows ctx.task_ids names)")


def _rotation_in_aggregate(factory: Factory, atol: float) -> None:
    g = torch.Generator().manual_seed(31)
    mats = [(torch.randn(len(_PRESENT), 30, generator=g, dtype=torch.float64),
             torch.rand(len(_PRESENT), generator=g, dtype=torch.float64) + 0.1) for _ in range(3)]
    states = []
    for order in (ALL, ROTATED):
        torch.manual_seed(1)
        m = factory()
        ids = [order.index(n) for n in _PRESENT]
        for grads, losses in mats:
            aggregate(m, grads, losses, task_ids=ids, all_tasks=order)
        states.append(m.state_dict())
    _check_sized_by_all_tasks(states[0], "aggregate")
    _compare_rotated(states[0], states[1], "aggregate, 3 calls without t0 and t3", atol)


def partial_labels(factory: Factory, atol: float, *, absent_state_moves: str = "") -> None:
    """``absent_state_moves``: why this method's state of an absent task may still change (e.g.
    an optimiser's momentum acting on every task's logit); the unchanged-entries part is then
    not checked."""
    for over in space_variants(factory):
        _rotation_in_trainer(factory, over, atol)
        if not absent_state_moves:
            _absent_untouched(factory, over)
    if is_gradient(factory()):
        _rotation_in_aggregate(factory, atol)


def nonfinite_state(factory: Factory, atol: float) -> None:
    require_gradient(factory())
    for over in space_variants(factory):
        for value in (math.nan, math.inf):
            where = f"gradients {value}{' ' + str(over) if over else ''}"
            torch.manual_seed(0)
            model = make_vector_model()
            m = factory(**over)
            poison = PoisonGradient([2], value=value)
            t = make_trainer([m], model=model, nonfinite="skip", plugins=[poison])
            for i in range(2):
                t.step(make_batch(model, seed=330 + i))
            before = _leaves(m.state_dict())
            try:
                skipped = t.step(make_batch(model, seed=332)).skipped
            except MtoError as exc:
                fail(f"{where}: the trainer (nonfinite='skip') raised {type(exc).__name__} on a step whose gradients "
                     f"were non-finite: {exc}; such a step must be skipped (the trainer skips it when the update comes "
                     "out non-finite, or when a method raises while ctx.grads is non-finite)")
            if not skipped:
                fail(f"{where}: a step whose gradients were all non-finite was applied (nonfinite='skip' did not "
                     "skip it): the update came out finite, so the method hid the NaN instead of passing it on "
                     "or refusing the matrix")
            after = _leaves(m.state_dict())
            changed = [k for k, v in before.items() if v.is_floating_point() and not _identical(v, after.get(k))]
            if changed:
                fail(f"{where}: a step whose gradients were all non-finite (skipped by the trainer) changed "
                     f"{', '.join(changed)}; keep state unchanged when ctx.grads_finite() is False "
                     "(torch.where on the device), or every later update inherits the NaN")
            ctx = t.step(make_batch(model, seed=333))
            if ctx.skipped or not torch.isfinite(params(t)).all():
                fail(f"{where}: the clean step after a non-finite one gave a non-finite update (the trainer skipped "
                     "it): the bad gradients reached the method's state")
