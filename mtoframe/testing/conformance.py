"""Conformance suite: the promises every mtoframe method must keep, runnable on any method.

Plugin authors run it in one line from a test file::

    from mtoframe.testing.conformance import conformance_tests

    test_conformance = conformance_tests("mymethod")            # a registered name
    test_mine_c2 = conformance_tests(MyMethod, c=2.0)           # or a Method class / factory

or call :func:`check_method` directly, which returns a :class:`Report` (and raises
:class:`ConformanceError` listing every failed check unless ``raise_on_failure=False``).

A *factory* is any callable returning a fresh, configured :class:`~mtoframe.Method` when called
with option overrides as keywords (a :class:`~mtoframe.Method` subclass is one). The checks:

``declarations``
    name, summary, paper, ``Options`` (attrs), roles, ``grad_space``, ``rep_grads``,
    ``extra_forward`` and ``heads_receive`` are well formed; every ``on_*`` hook method carries
    ``@hookimpl``; gradient methods implement ``on_shared_grads``, loss methods and regularisers
    ``on_task_losses``.
``repr``
    ``repr`` shows every option as ``name=value``.
``aggregate``
    (gradient methods) on every matrix of :func:`~mtoframe.testing.gradient_families`, an all-zero
    matrix and a float32 matrix, a fresh instance's :func:`mtoframe.aggregate` returns a finite
    vector of length P in the input's dtype.
``single_task``
    (gradient methods) a 1×P matrix (one task present under partial labels) gives a finite vector.
``state_dict``
    state holds tensors and plain containers only, survives ``torch.save`` /
    ``torch.load(weights_only=True)``, a fresh instance accepts its own empty state, and a fresh
    instance loaded with a used instance's state produces *identical* subsequent outputs — through
    ``aggregate`` (gradient methods) and through a :class:`~mtoframe.Trainer` resumed mid-run
    (model, optimiser, step/epoch counters, history and global RNG restored as a checkpoint would).
``partial_labels``, ``nonfinite``
    per-task state follows ``ctx.task_ids`` and leaves absent tasks alone; a step with
    non-finite gradients is skipped under ``nonfinite="skip"`` and leaves the state as it was:
    see :mod:`mtoframe.testing.state_checks`.
``determinism``
    two fresh instances, same seed, same inputs: identical outputs and trained parameters.
``trainer``
    inside a Trainer, on a vector and a conv model, in every gradient space the method offers
    (both values of a ``space`` option; the conv model in the default space only), with and
    without a task missing from the batch: the
    trainer's space is the declared one, parameters stay finite and, with the heads frozen, the
    summed loss of a fixed batch decreases over a few SGD steps of the shared parameters.
``stack``
    the method in an own training loop (:class:`~mtoframe.Stack`, task parameters inferred) gives
    every parameter the Trainer's ``.grad`` (float64, to ``max(atol, 1e-9)``) over three steps,
    one of them with a task missing, in every gradient space the method offers; methods that
    recompute the losses get ``recompute_losses`` from the loop.
``stacking``
    the stacking rule of DESIGN §3 holds at Trainer construction: the method twice is rejected;
    an aggregator followed by a gradient transform is rejected, preceded by an identity transform
    is accepted and gives the same update as alone; a transform followed by an aggregator is
    accepted and steps (so a transform must not set the update), after one is rejected.

Outputs are compared with ``torch.equal`` (bit-identical on CPU) unless ``atol`` is given.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from ..api import aggregate, create
from ..checkpoint import check_plain
from ..errors import CheckpointError, StackError
from ..hookspecs import hookimpl
from ..method import SPACES, Method, Role
from ..model import MultiTaskModel
from ..modes import mode
from ..registry import HOOK_NAMES
from ..stack import Stack
from ..trainer import Trainer
from ._common import ConformanceError, Factory, NotApplicable
from ._common import fail as _fail
from ._common import is_gradient as _is_gradient
from ._common import params as _params
from ._common import require_gradient as _require_gradient
from ._common import space_variants as _space_variants
from .factories import (
    gradient_families,
    make_batch,
    make_conv_model,
    make_tasks,
    make_trainer,
    make_vector_model,
)
from .state_checks import nonfinite_state, partial_labels

CHECKS = ("declarations", "repr", "aggregate", "single_task", "state_dict", "partial_labels", "nonfinite",
          "determinism", "trainer", "stack", "stacking")
_NAME = re.compile(r"^[a-z][a-z0-9]*(\.[a-z][a-z0-9]*)?$")


@attrs.frozen
class Outcome:
    check: str
    status: str  # "passed" | "failed" | "skipped"
    message: str = ""


@attrs.frozen
class Report:
    method: str
    outcomes: tuple[Outcome, ...]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [f"conformance of {self.method!r}:"]
        lines += [f"  {o.status:<7} {o.check}" + (f": {o.message}" if o.message else "") for o in self.outcomes]
        return "\n".join(lines)


# -- entry points ------------------------------------------------------------------------------


def as_factory(method: str | Factory, /, **options: Any) -> Factory:
    """A factory from a registered name, a Method class or a callable, with fixed ``options``
    (overrides passed at call time win)."""
    if isinstance(method, str):
        name = method
        return lambda **over: create(name, **{**options, **over})
    if not callable(method):
        raise TypeError(f"expected a method name, a Method class or a factory, got {method!r}")
    return lambda **over: method(**{**options, **over})


def run_check(factory: Factory, check: str, *, atol: float = 0.0, absent_state_moves: str = "") -> Outcome:
    """Run one named check; a broken promise gives status ``failed`` with the reason.
    ``absent_state_moves``: see :func:`check_method`."""
    if check not in CHECKS:
        raise ValueError(f"unknown conformance check {check!r}; checks: {', '.join(CHECKS)}")
    try:
        if check == "partial_labels":
            partial_labels(factory, atol, absent_state_moves=absent_state_moves)
        else:
            _CHECK_FUNCS[check](factory, atol)
    except NotApplicable as exc:
        return Outcome(check, "skipped", str(exc))
    except ConformanceError as exc:
        return Outcome(check, "failed", str(exc))
    except Exception as exc:  # an exception from the method is a failure of that check, reported with its type
        return Outcome(check, "failed", f"{type(exc).__name__}: {exc}")
    return Outcome(check, "passed")


def check_method(
    method: str | Factory,
    /,
    *,
    checks: Iterable[str] = CHECKS,
    atol: float = 0.0,
    absent_state_moves: str = "",
    raise_on_failure: bool = True,
    **options: Any,
) -> Report:
    """Run the conformance checks on ``method`` (a name, a Method class or a factory) configured
    with ``options``. Raises :class:`ConformanceError` with the full report if any check fails.

    ``absent_state_moves`` says why the method's state of a task absent from the batch still
    changes by design (an optimiser's momentum on every task's logit, a renormalisation over all
    tasks); ``partial_labels`` then checks only that per-task state follows ``ctx.task_ids``."""
    factory = as_factory(method, **options)
    report = Report(factory().name, tuple(run_check(factory, c, atol=atol, absent_state_moves=absent_state_moves)
                                          for c in checks))
    if raise_on_failure and not report.ok:
        raise ConformanceError(str(report))
    return report


def conformance_tests(
    method: str | Factory, /, *, checks: Iterable[str] = CHECKS, atol: float = 0.0, absent_state_moves: str = "",
    **options: Any
) -> Callable[[str], None]:
    """A pytest test function parametrised over the checks; assign it to a ``test_*`` name.
    ``absent_state_moves``: see :func:`check_method`."""
    import pytest

    factory = as_factory(method, **options)
    selected = list(checks)

    @pytest.mark.parametrize("check", selected)
    def test_conformance(check: str) -> None:
        outcome = run_check(factory, check, atol=atol, absent_state_moves=absent_state_moves)
        if outcome.status == "skipped":
            pytest.skip(outcome.message)
        if outcome.status == "failed":
            raise ConformanceError(f"{check}: {outcome.message}")

    return test_conformance


# -- helpers -----------------------------------------------------------------------------------


def _same(a: Tensor, b: Tensor, atol: float) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a, b) if atol == 0 else torch.allclose(a, b, rtol=0, atol=atol)


def _roundtrip(state: Any) -> Any:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _check_plain(obj: Any, where: str = "state") -> None:
    # the same rule the trainer applies when it saves a checkpoint, so a method that passes here
    # never fails at save time
    try:
        check_plain(obj, where)
    except CheckpointError as exc:
        _fail(str(exc))


def _matrices(seed: int, tasks: Sequence[int] = (3,), n: int = 4, dim: int = 20) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = tasks[i % len(tasks)]
        out.append((torch.randn(t, dim, generator=g, dtype=torch.float64),
                    torch.rand(t, generator=g, dtype=torch.float64) + 0.1))
    return out


def _loader(model: Any, n: int = 2) -> list[Any]:
    return [make_batch(model, seed=100 + i) for i in range(n)]


def _total_loss(trainer: Any, batch: Any) -> float:
    with torch.no_grad():
        inputs, targets = batch
        preds = trainer.model(inputs)
        return sum(float(t.loss(preds[t.name], targets[t.name])) for t in trainer.tasks)


# -- the checks --------------------------------------------------------------------------------


def _declarations(factory: Factory, atol: float) -> None:
    m = factory()
    cls = type(m)
    if not isinstance(m, Method):
        _fail(f"the factory returned {type(m).__qualname__}, not a mtoframe.Method")
    if not _NAME.match(cls.name):
        _fail(f"name {cls.name!r} must be lower-case letters/digits, no separators (optional 'prefix.')")
    for attr in ("summary", "paper", "heads_receive"):
        if not isinstance(getattr(cls, attr), str) or not getattr(cls, attr).strip():
            _fail(f"{attr} must be a non-empty string")
    if not attrs.has(cls.Options):
        _fail("Options must be an attrs class")
    if not isinstance(m.options, cls.Options):
        _fail(f"options is a {type(m.options).__qualname__}, expected {cls.Options.__qualname__}")
    if not isinstance(cls.roles, Role):
        _fail(f"roles must be a mtoframe.Role flag, got {cls.roles!r}")
    if m.grad_space not in (None, *SPACES):
        _fail(f"grad_space must be None, 'params' or 'representation', got {m.grad_space!r}")
    if (m.grad_space is None) == _is_gradient(m):
        _fail(f"grad_space {m.grad_space!r} disagrees with roles {cls.roles}: gradient methods (transform or "
              "aggregator) declare a space, others none")
    if m.rep_grads not in ("none", "plain", "differentiable"):
        _fail(f"rep_grads must be 'none', 'plain' or 'differentiable', got {m.rep_grads!r}")
    if not isinstance(m.extra_forward, bool):
        _fail(f"extra_forward must be a bool, got {m.extra_forward!r}")
    for hook in HOOK_NAMES:
        fn = getattr(cls, hook, None)
        if fn is not None and not hasattr(fn, "mtoframe_impl"):
            _fail(f"{cls.__qualname__}.{hook} is not decorated with @mtoframe.hookimpl, so it would never be called")
    implemented = {h for h in HOOK_NAMES if hasattr(getattr(cls, h, None), "mtoframe_impl")}
    if _is_gradient(m) and "on_shared_grads" not in implemented:
        _fail("a gradient method (transform or aggregator) must implement on_shared_grads")
    if cls.roles & (Role.LOSS | Role.REGULARISER) and "on_task_losses" not in implemented:
        _fail("a loss method or regulariser must implement on_task_losses")
    if m.extra_forward and "on_after_step" not in implemented:
        _fail("extra_forward=True but on_after_step is not implemented")


def _repr(factory: Factory, atol: float) -> None:
    m = factory()
    text = repr(m)
    for a in attrs.fields(type(m.options)):
        shown = f"{a.name}={getattr(m.options, a.name)!r}"
        if shown not in text:
            _fail(f"repr {text!r} does not show option {shown}")


def _aggregate_cases() -> Iterator[tuple[str, Tensor, Tensor]]:
    for case in gradient_families(tasks=(2, 3, 5), dim=30):
        yield case.name, case.grads, case.losses
    yield "all-zero-T3", torch.zeros(3, 30, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    yield "float32-T3", torch.randn(3, 30, generator=g), torch.rand(3, generator=g) + 0.1


def _aggregate(factory: Factory, atol: float) -> None:
    _require_gradient(factory())
    bad = []
    for name, grads, losses in _aggregate_cases():
        out = aggregate(factory(), grads.clone(), losses.clone())
        if out.shape != (grads.shape[1],) or out.dtype != grads.dtype:
            bad.append(f"{name}: got shape {tuple(out.shape)} {out.dtype}, expected ({grads.shape[1]},) {grads.dtype}")
        elif not torch.isfinite(out).all():
            bad.append(f"{name}: non-finite output")
    if bad:
        _fail("; ".join(bad))


def _single_task(factory: Factory, atol: float) -> None:
    _require_gradient(factory())
    g = torch.Generator().manual_seed(3)
    grads = torch.randn(1, 30, generator=g, dtype=torch.float64)
    out = aggregate(factory(), grads, torch.ones(1, dtype=torch.float64))
    if out.shape != (30,) or not torch.isfinite(out).all():
        _fail(f"1×P matrix gave shape {tuple(out.shape)}, finite={bool(torch.isfinite(out).all())}")


def _state_dict(factory: Factory, atol: float) -> None:
    fresh = factory()
    empty = fresh.state_dict()
    _check_plain(empty, "fresh state_dict()")
    factory().load_state_dict(_roundtrip(empty))

    if _is_gradient(fresh):
        mats = _matrices(seed=11)
        m1 = factory()
        for g, loss in mats[:3]:
            aggregate(m1, g, loss)
        state = m1.state_dict()
        _check_plain(state, "state_dict() after use")
        m2 = factory()
        m2.load_state_dict(_roundtrip(state))
        g, loss = mats[3]
        torch.manual_seed(1234)
        a = aggregate(m1, g, loss)
        torch.manual_seed(1234)
        b = aggregate(m2, g, loss)
        if not _same(a, b, atol):
            _fail(f"aggregate after a state_dict round trip differs (max |diff| {(a - b).abs().max():.3g})")

    for over in _space_variants(factory):
        _trainer_resume(factory, over, atol)


def _trainer_resume(factory: Factory, over: dict[str, Any], atol: float) -> None:
    torch.manual_seed(0)
    model = make_vector_model()
    loader = _loader(model)
    m1 = factory(**over)
    a = make_trainer([m1], model=model)
    a.fit(loader, epochs=2)
    state = m1.state_dict()
    _check_plain(state, f"state_dict() after training {over or ''}")

    m2 = factory(**over)
    b = make_trainer([m2], model=copy.deepcopy(a.model))
    b.start()  # on_train_start first: it may allocate state and optimiser groups that loading then fills
    m2.load_state_dict(_roundtrip(state))
    b.optimizer.load_state_dict(_roundtrip(a.optimizer.state_dict()))
    b.global_step, b.epoch, b.history = a.global_step, a.epoch, copy.deepcopy(a.history)

    torch.manual_seed(99)
    a.fit(loader, epochs=1)
    torch.manual_seed(99)
    b.fit(loader, epochs=1)
    pa, pb = _params(a), _params(b)
    if not _same(pa, pb, atol):
        _fail(f"training resumed from a state_dict diverged {over or ''} (max |diff| {(pa - pb).abs().max():.3g}); "
              "is all state (counters, EMA buffers, generator states) in state_dict?")


def _determinism(factory: Factory, atol: float) -> None:
    m = factory()
    if _is_gradient(m):
        outs = []
        for _ in range(2):
            torch.manual_seed(5)
            inst = factory()
            outs.append([aggregate(inst, g, loss) for g, loss in _matrices(seed=21, tasks=(3, 2))])
        for i, (a, b) in enumerate(zip(*outs, strict=True)):
            if not _same(a, b, atol):
                _fail(f"two fresh instances under one seed differ at call {i} (max |diff| {(a - b).abs().max():.3g})")
    for over in _space_variants(factory):
        params = []
        for _ in range(2):
            torch.manual_seed(5)
            model = make_vector_model()
            t = make_trainer([factory(**over)], model=model)
            t.fit(_loader(model, 3), epochs=2)
            params.append(_params(t))
        if not _same(params[0], params[1], atol):
            diff = (params[0] - params[1]).abs().max()
            _fail(f"two seeded training runs differ {over or ''} (max |diff| {diff:.3g})")


def _trainer(factory: Factory, atol: float) -> None:
    variants = _space_variants(factory)
    # conv steps are costly on CPU: the conv model runs in the default space, for fewer steps
    runs: list[tuple[dict[str, Any], str, Callable[[], MultiTaskModel], int]] = [
        (over, "vector", make_vector_model, 12) for over in variants]
    runs.append(({}, "conv", make_conv_model, 3))
    for over, kind, make_model, steps in runs:
        where = f"{kind} model{' ' + str(over) if over else ''}"
        torch.manual_seed(0)
        model = make_model()
        m = factory(**over)
        # heads frozen: the loss must fall through the method's shared update alone
        groups: list[dict[str, Any]] = [{"params": model.shared_parameters()},
                                        {"params": model.head_parameters(), "lr": 0.0}]
        opt = torch.optim.SGD(groups, lr=0.02)
        t = Trainer(model, make_tasks(list(model.heads)), [m], optimizer=opt)
        if t.grad_space != m.grad_space:
            _fail(f"{where}: trainer runs in space {t.grad_space!r} but the method declares {m.grad_space!r}")
        batch = make_batch(model, seed=3)
        before = _total_loss(t, batch)
        for i in range(steps):
            if i == 2:  # partial labels: one task missing from this batch
                x, y = batch
                t.step((x, {k: v for k, v in y.items() if k != "b"}))
            else:
                t.step(batch)
            if not torch.isfinite(_params(t)).all():
                _fail(f"{where}: non-finite parameters after step {i}")
        after = _total_loss(t, batch)
        if not (math.isfinite(after) and after < before):
            _fail(f"{where}: summed loss of a fixed batch did not decrease over {steps} SGD steps of the encoder "
                  f"({before:.6g} -> {after:.6g})")


def _stack(factory: Factory, atol: float) -> None:
    for over in _space_variants(factory):
        _stack_variant(factory, over, max(atol, 1e-9))


def _stack_variant(factory: Factory, over: dict[str, Any], tol: float) -> None:
    torch.manual_seed(0)
    model = make_vector_model()
    twin = copy.deepcopy(model)
    tasks = make_tasks(list(model.heads))
    loss_of = {t.name: t.loss for t in tasks}
    trainer = Trainer(model, tasks, [factory(**over)], optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    stack = Stack([factory(**over)], tasks=list(model.heads), encoder=twin.encoder)
    opt = torch.optim.SGD([{"params": twin.parameters()}, *stack.param_groups()], lr=0.05)

    def forward(x: Tensor, y: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        z = twin.encoder(x)
        return z, {t: loss_of[t](twin.heads[t](z), target) for t, target in y.items()}

    def recompute(train_mode: bool, x: Tensor, y: Mapping[str, Tensor]) -> dict[str, Tensor]:
        with mode(twin, train=train_mode):
            return forward(x, y)[1]

    for i in range(3):
        x, y = make_batch(model, seed=40 + i)
        if i == 1:  # partial labels
            del y["b"]
        torch.manual_seed(100 + i)  # methods drawing from the global generator draw alike
        trainer.step((x, y))
        torch.manual_seed(100 + i)
        z, losses = forward(x, y)
        ctx = stack.backward(losses, features=z, shared_params=twin.encoder.parameters())
        if not ctx.skipped:
            opt.step()
        stack.after_step(ctx, recompute_losses=functools.partial(recompute, x=x, y=y))
        named = [*model.named_parameters(), *((f"method parameter {j}", p)
                                               for j, p in enumerate(trainer.stack.parameters()))]
        for (name, p), q in zip(named, [*twin.parameters(), *stack.parameters()], strict=True):
            where = f"{over or ''} step {i}: the Stack's .grad of {name} differs from the Trainer's"
            if p.grad is None or q.grad is None:
                if (p.grad is None) != (q.grad is None):
                    _fail(f"{where} (one is None)")
            elif not torch.allclose(p.grad, q.grad, rtol=0, atol=tol):
                _fail(f"{where} (max |diff| {(p.grad - q.grad).abs().max():.3g})")


class _Probe(Method):
    """A stack member in a chosen gradient space, to probe the stacking rule."""

    paper = "none"

    def __init__(self, space: str) -> None:
        super().__init__()
        self._space = space

    @property
    def grad_space(self) -> Any:
        return self._space


class _Identity(_Probe):
    """A gradient transform that leaves the matrix unchanged."""

    name = "conformanceidentity"
    summary = "identity gradient transform (conformance suite)"
    roles = Role.TRANSFORM

    @hookimpl
    def on_shared_grads(self, ctx: Any) -> None:
        ctx.grads = ctx.grads.clone()


class _Sum(_Probe):
    """An aggregator returning the row sum."""

    name = "conformancesum"
    summary = "row-sum aggregator (conformance suite)"
    roles = Role.AGGREGATOR

    @hookimpl
    def on_shared_grads(self, ctx: Any) -> None:
        ctx.set_update(ctx.grads.sum(0))


def _expect_stack_error(stack: list[Method], why: str) -> None:
    try:
        make_trainer(stack)
    except StackError:
        return
    _fail(f"the stack {[m.name for m in stack]} was accepted but {why}")


def _stacking(factory: Factory, atol: float) -> None:
    m = factory()
    make_trainer([m])
    _expect_stack_error([factory(), factory()], "a method may appear only once")
    space = m.grad_space
    if space is None:
        return
    if m.roles & Role.AGGREGATOR:
        _expect_stack_error([factory(), _Identity(space)], "an aggregator must come last among gradient methods")
        _expect_stack_error([factory(), _Sum(space)], "at most one aggregator is allowed")
        ps = []
        for stack in ([factory()], [_Identity(space), factory()]):
            torch.manual_seed(0)
            model = make_vector_model()
            t = make_trainer(stack, model=model)
            t.step(make_batch(model, seed=4))
            ps.append(_params(t))
        if not _same(ps[0], ps[1], atol):
            _fail("an identity transform before the aggregator changed its update")
    else:
        model = make_vector_model()
        make_trainer([factory(), _Sum(space)], model=model).step(make_batch(model, seed=4))
        _expect_stack_error([_Sum(space), factory()], "a transform may not follow the aggregator")


_CHECK_FUNCS: dict[str, Callable[[Factory, float], None]] = {
    "declarations": _declarations,
    "repr": _repr,
    "aggregate": _aggregate,
    "single_task": _single_task,
    "state_dict": _state_dict,
    "nonfinite": nonfinite_state,
    "determinism": _determinism,
    "trainer": _trainer,
    "stack": _stack,
    "stacking": _stacking,
}
