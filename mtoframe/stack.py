"""``mtoframe.Stack``: one step's gradient pipeline for any model in any training loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import Tensor, nn

from . import checks
from .amp import MixedPrecision
from .api import as_method
from .context import StepContext
from .distributed import Communicator, is_distributed
from .errors import BatchError, MtoError, OptionError
from .gradients import GradientEngine
from .hooks import HookDispatcher, sync
from .method import Method, Space, check_generic_stack
from .model import check_task_name
from .nonfinite import NonFiniteGuard, NonFinitePolicy
from .tblog import step_scalars, write_scalars

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from .hookspecs import MethodHost

#: what ``after_step``'s ``recompute_losses`` is: ``train_mode -> {task: loss}``, run under no_grad
Recompute = Callable[[bool], Mapping[str, Tensor]]


class Stack(Sequence[Method]):
    """A configured, stateful stack of MTO methods that runs one step's gradient pipeline.

    It needs no :class:`~mtoframe.MultiTaskModel` and no :class:`~mtoframe.Trainer`: give it the
    step's per-task losses, the shared features they were computed from and the shared
    parameters, and it fills ``.grad`` of every parameter it trains exactly as the Trainer
    would (the Trainer is a loop around a Stack)::

        stack = mtoframe.Stack(["repmtl", ("nashmtl", {"max_norm": 1.0})], tasks=["seg", "depth"],
                               encoder=model.backbone)
        optimizer = torch.optim.Adam([{"params": model.parameters()}, *stack.param_groups()], lr=1e-3)
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            z = model.backbone(x)
            losses = {"seg": ce(model.seg(z), y["seg"]), "depth": l1(model.depth(z), y["depth"])}
            ctx = stack.backward(losses, features=z, shared_params=model.backbone.parameters())
            optimizer.step()
            stack.after_step(ctx, recompute_losses=None)   # FAMO needs it: see below

    ``losses`` may leave out tasks that have no target in this batch (partial labels): they get no
    gradient that step. ``stack.backward`` replaces the ``.grad`` of the shared parameters, of the
    task-specific parameters and of the stack's own parameters; other parameters are left alone.
    An absent task's head is cleared only once the stack has seen it (or ``task_params`` names
    it), so zero the optimiser's gradients every step as usual.

    Methods that recompute the losses after the step (FAMO) need ``recompute_losses``: a callable
    ``train_mode -> {task: loss}`` evaluating the same batch under the updated parameters (it is
    run under ``torch.no_grad()``; ``train_mode`` says whether to put the model in training mode)::

        def recompute(train_mode):
            with mtoframe.modes.mode(model, train=train_mode):  # restores every module's own mode
                z = model.backbone(x)
                return {"seg": ce(model.seg(z), y["seg"]), "depth": l1(model.depth(z), y["depth"])}

        stack.after_step(ctx, recompute_losses=recompute)

    Call :meth:`after_step` after every ``optimizer.step()``: it runs the methods' post-step
    updates, writes the step's scalars and advances :attr:`step`. When ``ctx.skipped`` is True
    (a non-finite step under ``nonfinite="skip"``) the gradients are cleared, so a plain
    ``optimizer.step()`` does nothing; a ``GradScaler``'s ``step`` must then be skipped.
    At the end of each epoch, :meth:`end_epoch` runs epoch-level hooks (DWA, STCH, GradNorm).

    :param methods: the stack, in order; each a name, a ``(name, options)`` pair or a
        :class:`~mtoframe.Method`. ``[]`` is EW (sum of the task losses).
    :param tasks: every task's name (a batch may carry a subset).
    :param encoder: the module producing the features; needed by methods that read it when
        they start (GradNorm's layer, GradVac's groups) and used to create learnable loss weights
        (UW) with the model's dtype and device before the first step. Without it those parameters
        are created at the first :meth:`backward` (``param_groups()`` then starts the stack).
    :param writer: a TensorBoard ``SummaryWriter``; every ``log_every`` steps the step's scalars
        (losses, weights, gradient norms and cosines, hook timings) are written to it.
    :param nonfinite: ``"raise"`` or ``"skip"`` a step whose losses, update or gradients are not
        finite (see ``docs/failures.md``).
    :param batched_grads: per-task gradients with one vmapped ``autograd.grad`` at any ``T``
        (the engine does so by itself from ``gradients.BATCHED_MIN_TASKS`` tasks on).
    :param grad_scaler: a float16 ``torch.amp.GradScaler`` whose ``scale`` the losses get.
    :param plugins: extra hook implementations (observers) called after the methods.

    Task-specific parameters (``task_params`` of :meth:`backward`) are found, when not given, by
    walking each task loss's autograd graph down to ``features``: every parameter met on the way
    belongs to that task. A loss that reaches a shared parameter other than through ``features``
    is refused (pass ``task_params`` and features that carry every shared path).
    """

    def __init__(
        self,
        methods: Sequence[Any] = (),
        *,
        tasks: Sequence[str],
        encoder: nn.Module | None = None,
        writer: SummaryWriter | None = None,
        log_every: int = 50,
        nonfinite: NonFinitePolicy = "raise",
        batched_grads: bool = False,
        grad_scaler: torch.amp.GradScaler | None = None,
        plugins: Sequence[object] = (),
    ) -> None:
        if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
            raise OptionError(f"tasks must be a non-empty sequence of task names, got {tasks!r}")
        names = tuple(getattr(t, "name", t) for t in tasks)
        for n in names:
            check_task_name(n)
        if len(set(names)) != len(names):
            raise OptionError(f"task names must be unique, got {list(names)}")
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise OptionError(f"log_every must be a positive integer, got {log_every!r}")
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise OptionError(f"encoder must be an nn.Module or None, got {type(encoder).__name__}")
        self.task_names: tuple[str, ...] = names
        self.methods: tuple[Method, ...] = tuple(as_method(m) for m in methods)
        checks.check_stack_order(self.methods)
        check_generic_stack(self.methods)  # before any step: an impossible stack never trains
        self.grad_space: Space | None = next((m.grad_space for m in self.methods if m.grad_space is not None), None)
        self.encoder = encoder
        self.writer = writer
        self.log_every = log_every
        self.batched_grads = batched_grads
        self.amp = MixedPrecision(None, grad_scaler, torch.device("cpu"))
        self.comm = Communicator() if is_distributed() else None
        self.counters: dict[str, int] = {"skipped_steps": 0, "amp_skipped_steps": 0}
        self.guard = NonFiniteGuard(nonfinite, gradient_methods=[m.name for m in self.methods if m.grad_space],
                                    named_parameters=self._named_parameters, counters=self.counters, comm=self.comm)
        self.hooks = HookDispatcher([(m.name, m) for m in self.methods]
                                    + [(getattr(p, "name", type(p).__name__), p) for p in plugins])
        #: ``id(parameter) -> name`` for error messages (the Trainer fills it from its model)
        self.parameter_names: dict[int, str] = {}
        #: index of the next step and of the current epoch
        self.step = 0
        self.epoch = 0
        self._groups: list[dict[str, Any]] = []
        self._started = False
        self._engine: GradientEngine | None = None
        self._shared: list[nn.Parameter] = []
        self._others: list[nn.Parameter] = []
        self._task_seen: dict[int, nn.Parameter] = {}
        self._method_params: list[nn.Parameter] = []
        self._open: StepContext | None = None
        self._stage = ""
        self._features: Any = None
        self._t_step = 0.0

    # -- the sequence of methods -----------------------------------------------------------------

    @overload
    def __getitem__(self, i: int) -> Method: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Method]: ...
    def __getitem__(self, i: int | slice) -> Method | Sequence[Method]:
        return self.methods[i]

    def __len__(self) -> int:
        return len(self.methods)

    def __iter__(self) -> Iterator[Method]:
        return iter(self.methods)

    def __repr__(self) -> str:
        return f"Stack([{', '.join(map(repr, self.methods))}], tasks={list(self.task_names)})"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task names (``len(stack.tasks)`` is what methods size their state by)."""
        return self.task_names

    @property
    def model(self) -> _ModelView:
        """What ``on_train_start`` may read of the model: ``encoder``, ``parameters()``,
        ``shared_parameters()``."""
        return _ModelView(self.encoder, self._shared)

    @property
    def needs_engine(self) -> bool:
        """Whether a step needs per-task gradients (else: one backward of the weighted sum)."""
        return self.grad_space is not None or any(m.rep_grads != "none" for m in self.methods)

    # -- method parameters -----------------------------------------------------------------------

    def add_method_parameters(self, method: Method, params: Iterable[nn.Parameter], *, lr: float | None = None) -> None:
        """Called by a method in ``on_train_start``: its learnable parameters (UW's log-variances,
        GradNorm's weights) get their own optimiser group without weight decay."""
        group: dict[str, Any] = {"params": list(params), "weight_decay": 0.0, "mtoframe_method": method.name}
        if lr is not None:
            group["lr"] = lr
        self._groups.append(group)

    def param_groups(self) -> list[dict[str, Any]]:
        """The methods' learnable parameters as optimiser parameter groups (no weight decay, the
        method's own learning rate where it has one): ``torch.optim.Adam([..., *stack.param_groups()])``.
        Starts the stack (``on_train_start``)."""
        self.start()
        return [dict(g, params=list(g["params"])) for g in self._groups]

    def parameters(self) -> list[nn.Parameter]:
        """The methods' learnable parameters, flat (prefer :meth:`param_groups`, which keeps them
        out of weight decay). Starts the stack."""
        self.start()
        return list(self._method_params)

    def start(self) -> None:
        """Run ``on_train_start`` once (``param_groups``, ``backward`` and ``load_state_dict`` call it)."""
        if self._started:
            return
        self._started = True
        host: MethodHost = self  # what the hookspec promises methods (checked by mypy)
        self.hooks.call("on_train_start", None, trainer=host)
        self._method_params = [p for g in self._groups for p in g["params"]]
        if self.comm is not None:  # as DDP does: every rank starts from rank 0's values
            self.comm.broadcast(self.parameters())

    # -- one step --------------------------------------------------------------------------------

    def begin(self, tasks: Sequence[str] | None = None, *, device: torch.device | None = None) -> StepContext:
        """Open a step for the ``tasks`` present in its batch (default: all) and start its clock.
        Optional: :meth:`represent` and :meth:`backward` open one when none is open."""
        if self._open is not None:
            raise MtoError(f"step {self._open.step} is still open: call stack.after_step(ctx) after "
                           "optimizer.step() before starting the next step")
        present = self.task_names if tasks is None else self._present(tasks)
        self._t_step = time.perf_counter()
        logging = self.writer is not None and self.step % self.log_every == 0
        self._open = StepContext(tasks=present, all_tasks=self.task_names, step=self.step, epoch=self.epoch,
                                 grad_space=self.grad_space, logging=logging, device=device)
        self._stage, self._features = "begun", None
        return self._open

    def abandon(self) -> None:
        """Forget the open step (after an error in the loop between :meth:`begin` and
        :meth:`after_step`): its gradients are not applied and :attr:`step` does not advance.
        The stack's own methods abandon a step they fail in."""
        self._open, self._stage, self._features = None, "", None

    def represent(self, features: Any, *, tasks: Sequence[str] | None = None) -> dict[str, Any]:
        """Run ``on_representation`` on ``features`` and return each present task's head input.

        Optional for own loops (no shipped method implements the hook). Heads that read these
        inputs (one alias of the features each) make per-task gradients cheaper: one autograd
        call then traverses each head once."""
        ctx = self._open if self._open is not None else self.begin(tasks, device=_device(features))
        if self._stage != "begun":
            raise MtoError(f"stack.represent was called twice in step {ctx.step}")
        try:
            return self._represent(ctx, features)
        except BaseException:
            self.abandon()
            raise

    def _represent(self, ctx: StepContext, features: Any) -> dict[str, Any]:
        ctx.z = self._features = features
        self.hooks.call("on_representation", ctx, ctx=ctx)
        self._stage = "represented"
        z = ctx.z
        if self.needs_engine and isinstance(z, Tensor) and z.requires_grad:
            # task t's loss then reaches Z only through its own alias: one autograd call gives every
            # ∂L_t/∂Z (grad of a stacked loss's element would run every head, the others with zeros)
            inputs = {t: z.view_as(z) for t in ctx.tasks}
            ctx.grad_cache.head_inputs = tuple(inputs.values())
            return inputs
        return {t: z for t in ctx.tasks}

    def backward(
        self,
        losses: Mapping[str, Tensor | None],
        *,
        features: Any,
        shared_params: Iterable[nn.Parameter],
        task_params: Mapping[str, Iterable[nn.Parameter]] | None = None,
    ) -> StepContext:
        """Run the stack on one step's ``{task: scalar loss}`` and fill ``.grad``.

        :param losses: a scalar loss per task present in the batch (a missing or None task is
            left out of this step).
        :param features: the shared representation the task losses were computed from (a tensor
            for methods that read representation gradients).
        :param shared_params: the parameters that produced ``features``.
        :param task_params: ``{task: parameters}`` of each head; inferred when omitted.
        :returns: the step's :class:`StepContext`; pass it to :meth:`after_step`.
        """
        if not isinstance(losses, Mapping):
            raise BatchError(f"losses must be a mapping {{task: scalar loss}}, got {type(losses).__name__}")
        present = self._present([t for t, v in losses.items() if v is not None])
        ctx = self._open if self._open is not None else self.begin(present, device=_device(features))
        if self._stage not in ("begun", "represented"):
            raise MtoError(f"stack.backward was called twice in step {ctx.step}; call stack.after_step(ctx) first")
        if present != ctx.tasks:
            raise BatchError(f"losses are given for tasks {list(present)} but the step was begun for {list(ctx.tasks)}")
        if self._stage == "represented" and features is not self._features and features is not ctx.z:
            self.abandon()
            raise MtoError("features must be the tensor given to stack.represent (or what its hooks made of it)")
        try:
            self._backward(ctx, losses, features, shared_params, task_params)
        except BaseException:
            self.abandon()
            raise
        return ctx

    def _backward(self, ctx: StepContext, losses: Mapping[str, Tensor | None], features: Any,
                  shared_params: Iterable[nn.Parameter], task_params: Mapping[str, Iterable[nn.Parameter]] | None
                  ) -> None:
        if self._stage != "represented":
            ctx.z = features
        shared = [p for p in shared_params if p.requires_grad]
        self._shared = shared  # what a method starting now reads as the model's parameters
        self.start()
        task_losses = tuple(_scalar(t, losses[t]) for t in ctx.tasks)
        others = self._task_parameters(ctx, task_losses, shared, task_params)
        ids = {id(p) for p in others}
        self._others = others + [p for p in self._method_params if id(p) not in ids]
        # a task absent from this batch keeps no gradient from an earlier step either
        for p in others:
            self._task_seen.setdefault(id(p), p)
        for p in (*shared, *self._method_params, *self._task_seen.values()):
            p.grad = None
        self._stage = "backward"
        if self.needs_engine:
            ctx.engine = self._engine_for(shared)
        ctx.grad_cache.task_losses = task_losses
        ctx.losses = ctx.raw_losses = self._union_losses(ctx, torch.stack(task_losses))
        self.hooks.call("on_task_losses", ctx, ctx=ctx)
        if not self._gradients(ctx, shared):
            self._skip(ctx, shared)

    def after_step(self, ctx: StepContext, recompute_losses: Recompute | None = None) -> None:
        """After ``optimizer.step()``: run ``on_after_step`` (FAMO's logits, counters), write the
        step's scalars on logging steps, and advance :attr:`step`.

        :param recompute_losses: ``train_mode -> {task: loss}`` of the same batch under the updated
            parameters; required by methods that recompute the losses (FAMO)."""
        if ctx is not self._open or self._stage != "backward":
            raise MtoError("after_step needs the context returned by this stack's backward() of the current step")
        needs = [m.name for m in self.methods if m.extra_forward]
        if needs and recompute_losses is None:
            raise MtoError(f"method(s) {needs} recompute the losses after the optimiser step: pass "
                           "stack.after_step(ctx, recompute_losses=fn) with fn(train_mode) -> {task: loss} of the "
                           "same batch (see the Stack docstring)")
        if recompute_losses is not None:
            fn = recompute_losses
            ctx.loss_recomputer = lambda train_mode: self._recompute(ctx, fn, train_mode)
        try:
            self.hooks.call("on_after_step", ctx, ctx=ctx)
        except BaseException:
            self.abandon()
            raise
        finally:
            ctx.loss_recomputer = None  # the closure holds ctx: no reference cycle outlives the step
        sync(ctx)
        step_ms = (time.perf_counter() - self._t_step) * 1e3
        if ctx.logging and self.writer is not None:
            write_scalars(self.writer, step_scalars(ctx, step_ms), ctx.step)
        self.step += 1
        self.abandon()  # the step is closed

    def end_epoch(self, stats: Mapping[str, Any]) -> None:
        """Run ``on_epoch_end`` with the epoch's ``stats`` (``{"train_loss": {task: mean loss},
        "val": ...}``) and advance :attr:`epoch`."""
        host: MethodHost = self
        self.hooks.call("on_epoch_end", None, trainer=host, epoch=self.epoch, stats=dict(stats))
        self.epoch += 1

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Every method's state, the methods' parameters, step, epoch and counters (plain values
        and tensors: loads with ``weights_only=True``)."""
        return {
            "stack": [m.name for m in self.methods],
            "methods": {m.name: m.state_dict() for m in self.methods},
            "method_params": [p.detach().clone() for p in self.parameters()],
            "step": self.step,
            "epoch": self.epoch,
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = [m.name for m in self.methods]
        if list(state.get("stack", names)) != names:
            raise MtoError(f"state was saved by the stack {state['stack']}, this stack is {names}")
        params = self.parameters()
        if len(state["method_params"]) != len(params):
            raise MtoError(f"state has {len(state['method_params'])} method parameters, this stack {len(params)}")
        with torch.no_grad():
            for p, saved in zip(params, state["method_params"], strict=True):
                p.copy_(saved)
        for m in self.methods:
            m.load_state_dict(state["methods"][m.name])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.counters.clear()
        self.counters.update(state["counters"])

    # -- helpers ---------------------------------------------------------------------------------

    def _present(self, tasks: Iterable[str]) -> tuple[str, ...]:
        given = list(tasks)
        unknown = sorted(set(given) - set(self.task_names))
        if unknown:
            raise BatchError(f"unknown task(s) {unknown}; the stack's tasks are {list(self.task_names)}")
        present = tuple(t for t in self.task_names if t in given)
        if not present:
            raise BatchError(f"no task has a loss in this step; expected some of {list(self.task_names)}")
        return present

    def _engine_for(self, shared: list[nn.Parameter]) -> GradientEngine:
        engine = self._engine
        if engine is None or len(engine.shared) != len(shared) or any(
                a is not b for a, b in zip(engine.shared, shared, strict=True)):
            engine = self._engine = GradientEngine(shared, batched=self.batched_grads)
            engine.amp, engine.comm = self.amp, self.comm
        return engine

    def _task_parameters(self, ctx: StepContext, task_losses: Sequence[Tensor], shared: Sequence[nn.Parameter],
                         given: Mapping[str, Iterable[nn.Parameter]] | None) -> list[nn.Parameter]:
        shared_ids = {id(p) for p in shared}
        found: Mapping[str, Iterable[nn.Parameter]]
        if given is None:
            found = {t: _graph_parameters(t, loss, ctx.z) for t, loss in zip(ctx.tasks, task_losses, strict=True)}
        else:
            unknown = sorted(set(given) - set(self.task_names))
            if unknown:
                raise OptionError(f"task_params names unknown task(s) {unknown}; the tasks are {list(self.task_names)}")
            found = given
        out: list[nn.Parameter] = []
        seen: set[int] = set()
        for task, params in found.items():
            for p in params:
                if not p.requires_grad:
                    continue
                if id(p) in shared_ids:
                    how = ("its loss reaches it other than through features" if given is None
                           else "task_params lists it")
                    raise MtoError(f"a shared parameter (shape {tuple(p.shape)}) would also be task {task!r}'s: {how}; "
                                   "shared parameters must reach the losses only through features")
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _union_losses(self, ctx: StepContext, losses: Tensor) -> Tensor:
        """Float32 losses; under torch.distributed, the union batch's values with this rank's gradient."""
        losses = self.amp.float32(losses)
        if self.comm is None:
            return losses
        return self.comm.global_losses(losses, ctx.task_ids, len(self.task_names))

    def _grads(self, shared: Sequence[nn.Parameter]) -> list[Tensor]:
        """Gradients the optimiser would apply; none under a GradScaler, whose own inf check
        already skips the step (and a scaled overflow is not a policy violation)."""
        if self.amp.scaler is not None:
            return []
        return [p.grad for p in (*shared, *self._others) if p.grad is not None]

    def _gradients(self, ctx: StepContext, shared: Sequence[nn.Parameter]) -> bool:
        """One backward, or per-task gradients -> gradient methods -> update; False: skip the step.
        The finiteness of losses and gradients is read once per path, before the optimiser step."""
        losses = (ctx.losses, *ctx.extra_losses.values())
        if (self.grad_space is not None or self.amp.scaler is not None) and self.guard.check(ctx, *losses, what="loss"):
            return False
        t0 = time.perf_counter()
        if self.grad_space is None:
            objective = (ctx.weights * ctx.losses).sum() + sum(ctx.extra_losses.values())
            torch.autograd.backward(self.amp.scale(objective))
            if self.comm is not None:
                self.comm.reduce_grads([*shared, *self._others])
            if self.amp.scaler is None and self.guard.check(ctx, *losses, what="loss", grads=self._grads(shared)):
                return False
        elif self.amp.scaler is not None and not bool(ctx.grads_finite()):
            self.amp.mark_overflow(shared)  # scaled G overflowed: solvers never see it; the scaler skips
        else:
            try:
                self.hooks.call("on_shared_grads", ctx, ctx=ctx)
            except MtoError as exc:  # a solver refusing a NaN G is the step's fault: the policy decides
                if self.guard.refused(ctx, exc):
                    return False
                raise
            update = ctx.update if ctx.update is not None else ctx.grads.sum(0)
            assert ctx.engine is not None
            ctx.engine.apply(ctx, update, self._others)
            if self.comm is not None:
                # parameter-space shared gradients are the identical aggregated update on every
                # rank unless a regulariser added to them
                same = ctx.grad_space == "params" and not ctx.extra_losses
                self.comm.reduce_grads(self._others if same else [*shared, *self._others])
            if self.guard.check(ctx, update, what="update", grads=self._grads(shared)):
                return False
        sync(ctx)
        ctx.timings["backward"] = (time.perf_counter() - t0) * 1e3
        return True

    def _skip(self, ctx: StepContext, shared: Sequence[nn.Parameter]) -> None:
        for p in (*shared, *self._others):
            p.grad = None
        ctx.skipped = True
        self.counters["skipped_steps"] += 1
        ctx.log("steps/skipped", float(self.counters["skipped_steps"]))

    def _recompute(self, ctx: StepContext, fn: Recompute, train_mode: bool) -> Tensor:
        with torch.no_grad():
            values = fn(train_mode)
        if not isinstance(values, Mapping) or any(values.get(t) is None for t in ctx.tasks):
            raise MtoError(f"recompute_losses must return {{task: loss}} for the step's tasks {list(ctx.tasks)}, got "
                           f"{sorted(values) if isinstance(values, Mapping) else type(values).__name__}")
        losses = self.amp.float32(torch.stack([_scalar(t, values[t]) for t in ctx.tasks]))
        return losses if self.comm is None else self.comm.global_losses(losses, ctx.task_ids, len(self.task_names))

    def _named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        method = {id(p): i for i, p in enumerate(self.parameters())}
        for i, p in enumerate((*self._shared, *self._others)):
            name = self.parameter_names.get(id(p))
            if name is None:
                n = len(self._shared)
                kind = (f"method parameter {method[id(p)]}" if id(p) in method
                        else f"shared parameter {i}" if i < n else f"task parameter {i - n}")
                name = f"{kind} {tuple(p.shape)}"
            yield name, p


class _ModelView:
    """What a method's ``on_train_start`` may read of the model through a Stack."""

    def __init__(self, encoder: nn.Module | None, shared: Sequence[nn.Parameter]) -> None:
        self._encoder, self._shared = encoder, list(shared)

    @property
    def encoder(self) -> nn.Module:
        if self._encoder is None:
            raise MtoError("a method of this stack reads the encoder module when it starts: pass "
                           "mtoframe.Stack(..., encoder=your_backbone)")
        return self._encoder

    def shared_parameters(self) -> list[nn.Parameter]:
        if self._encoder is not None:
            return [p for p in self._encoder.parameters() if p.requires_grad]
        if not self._shared:
            raise MtoError("a method of this stack needs the shared parameters when it starts: pass "
                           "mtoframe.Stack(..., encoder=your_backbone), or start it with the first backward()")
        return list(self._shared)

    def parameters(self) -> Iterator[nn.Parameter]:
        if self._encoder is not None:
            return self._encoder.parameters()
        return iter(self.shared_parameters())


def _device(features: Any) -> torch.device | None:
    return features.device if isinstance(features, Tensor) else None


def _scalar(task: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise BatchError(f"loss of task {task!r} must be a scalar tensor, got {shape}")
    return value


def _graph_parameters(task: str, loss: Tensor, features: Any) -> list[nn.Parameter]:
    """Leaf tensors requiring grad that ``loss`` reaches in its autograd graph before ``features``."""
    stop = features.grad_fn if isinstance(features, Tensor) else None
    out: list[nn.Parameter] = []
    seen: set[object] = set()
    reached = stop is None
    todo = [loss.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is stop:
            reached = True
            continue
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        leaf = getattr(fn, "variable", None)
        if isinstance(leaf, Tensor):
            if leaf is features:
                reached = True
            else:
                out.append(leaf)  # type: ignore[arg-type]
            continue
        todo.extend(f for f, _ in fn.next_functions)
    if not reached:
        raise MtoError(f"the loss of task {task!r} does not depend on features: pass the tensor its head read "
                       "(or task_params=, to name each head's parameters yourself)")
    return out
