"""The trainer: one training step, readable top to bottom in :meth:`Trainer.step`."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pluggy
import torch
from torch import Tensor, nn

from . import checks, hookspecs
from .amp import MixedPrecision
from .api import as_method
from .checkpoint import FORMAT, check_plain, rng_state, save_atomic, set_rng_state
from .checkpoint import load as load_checkpoint
from .context import StepContext
from .distributed import Communicator, is_distributed, set_epoch, shard_loader
from .errors import BatchError, MethodError, MtoError, NonFiniteLossError, OptionError
from .gradients import GradientEngine
from .method import Method, check_generic_stack
from .model import MultiTaskModel, Task, check_tasks
from .nonfinite import nonfinite_detail, refused_nonfinite_grads, warn_first_skip
from .resume import check_finite_model, check_fits, checkpoint_errors
from .tblog import RunLogger, is_rank_zero, step_scalars

STEP_HOOKS = ("on_representation", "on_task_losses", "on_shared_grads", "on_after_step")
NonFinitePolicy = Literal["raise", "skip"]


class Trainer:
    """Trains a :class:`MultiTaskModel` on its tasks with a stack of MTO methods.

    :param methods: the stack, in order; each a name, a ``(name, options)`` pair or a
        :class:`Method`. ``[]`` is EW (sum of the task losses).
    :param optimizer: a torch optimiser over the model's parameters.
    :param scheduler: optional LR scheduler, stepped every epoch (``scheduler_interval="epoch"``)
        or every step.
    :param log_dir: TensorBoard run directory (written on rank 0 only); ``None`` logs nothing.
    :param log_every: write step scalars every this many steps.
    :param nonfinite: ``"raise"`` (name the task, parameters and step) or ``"skip"`` (skip and
        count the update) when a loss, the update or a gradient is NaN/inf (also when a gradient
        method raises on a non-finite gradient matrix). Either way parameters
        never become NaN. The check reads its flags on the host (as ``GradScaler.step`` does):
        once after the backward for losses, regularisers and gradients together, or, with
        gradient methods, once for the losses and once for the update and gradients: the
        deliberate exception to "no host sync outside logging steps", because a skip decided on
        the device would still move Adam's moments. See ``docs/failures.md``.
    :param batched_grads: compute per-task gradients with one vmapped ``autograd.grad``
        (``is_grads_batched``) instead of a loop; faster on GPUs, not supported by every op.
    :param plugins: extra hook implementations (observers) called after the methods.
    :param amp: autocast dtype for encoder, heads and losses (``torch.bfloat16`` on CPU,
        ``torch.float16`` on CUDA) or ``None``; see :mod:`mtoframe.amp`.
    :param grad_scaler: a ``torch.amp.GradScaler`` (float16): per-task gradients of scaled losses,
        unscaled to float32 before aggregation; overflowing steps skipped and counted.

    Under an initialised ``torch.distributed`` process group the ranks train as one process on the
    union batch; see :mod:`mtoframe.distributed`.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Sequence[Task],
        methods: Sequence[Any] = (),
        optimizer: torch.optim.Optimizer | None = None,
        *,
        scheduler: Any = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        log_dir: str | Path | None = None,
        log_every: int = 50,
        nonfinite: NonFinitePolicy = "raise",
        batched_grads: bool = False,
        progress: bool | None = None,
        hparams: Mapping[str, Any] | None = None,
        plugins: Sequence[object] = (),
        amp: torch.dtype | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if not isinstance(model, MultiTaskModel):
            raise MtoError(f"model must be an mtoframe.MultiTaskModel, got {type(model).__name__}")
        if optimizer is None:
            raise OptionError("Trainer needs optimizer=, e.g. torch.optim.Adam(model.parameters(), lr=1e-3)")
        if nonfinite not in ("raise", "skip"):
            raise OptionError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        if scheduler_interval not in ("epoch", "step"):
            raise OptionError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if not isinstance(log_every, int) or log_every < 1:
            raise OptionError(f"log_every must be a positive integer, got {log_every!r}")
        tasks = list(tasks)
        check_tasks(model, tasks)
        _check_optimizer(optimizer)
        checks.check_optimizer_params(optimizer, model)
        self.model = model
        self.tasks = tasks
        self.task_names = tuple(t.name for t in tasks)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.nonfinite = nonfinite
        self.log_every = log_every
        self.progress = progress

        self.stack: list[Method] = [as_method(m) for m in methods]
        checks.check_stack_order(self.stack)
        check_generic_stack(self.stack)  # before any step: an impossible stack never trains
        self.space = next((m.grad_space for m in self.stack if m.grad_space is not None), None)
        self.engine = GradientEngine(model.shared_parameters(), batched=batched_grads) if self._needs_engine() else None
        self.amp = MixedPrecision(amp, grad_scaler, next(model.parameters()).device)
        self.comm = Communicator() if is_distributed() else None
        if self.engine is not None:
            self.engine.amp, self.engine.comm = self.amp, self.comm

        # One plugin manager per trainer; hooks are called per method so the user's order holds
        # (pluggy itself would call the last registered first).
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.plugin_manager.add_hookspecs(hookspecs)
        self._members: list[tuple[str, object]] = [(m.name, m) for m in self.stack]
        self._members += [(getattr(p, "name", type(p).__name__), p) for p in plugins]
        checks.check_hookimpls(self._members)
        for i, (name, obj) in enumerate(self._members):
            self.plugin_manager.register(obj, name=f"{i}:{name}")
        self._callers = {hook: self._ordered_callers(hook) for hook in (*STEP_HOOKS, "on_train_start", "on_epoch_end")}

        self._method_params: list[nn.Parameter] = []
        self.global_step = 0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {"skipped_steps": 0, "amp_skipped_steps": 0}
        self._started = False
        self.logger = RunLogger(log_dir, hparams=self._hparams(hparams)) if log_dir is not None and is_rank_zero() else None

    # -- set-up ----------------------------------------------------------------------------------

    def _needs_engine(self) -> bool:
        return self.space is not None or any(m.saliency != "none" for m in self.stack)

    def _ordered_callers(self, hook: str) -> list[tuple[str, object, Callable[..., Any]]]:
        impls = {id(i.plugin) for i in getattr(self.plugin_manager.hook, hook).get_hookimpls()}
        out = []
        for name, obj in self._members:
            if id(obj) in impls:
                others = [o for _, o in self._members if o is not obj]
                out.append((name, obj, self.plugin_manager.subset_hook_caller(hook, remove_plugins=others)))
        return out

    def _hparams(self, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        hp: dict[str, Any] = {"stack": "+".join(m.name for m in self.stack) or "ew"}
        for m in self.stack:
            hp[f"method/{m.name}"] = repr(m)
        hp["optimizer"] = type(self.optimizer).__name__
        hp["lr"] = self.optimizer.param_groups[0].get("lr")
        hp.update(extra or {})
        return hp

    def add_method_parameters(self, method: Method, params: Iterable[nn.Parameter], *, lr: float | None = None) -> None:
        """Give a method's learnable parameters (UW's log-variances, GradNorm's weights) their own
        optimiser group, without weight decay; they are saved with the optimiser's state."""
        params = list(params)
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0, "mtoframe_method": method.name}
        if lr is not None:
            group["lr"] = lr
        self.optimizer.add_param_group(group)
        self._method_params += params

    def start(self) -> None:
        """Run ``on_train_start`` once (``step`` and ``fit`` call it)."""
        if not self._started:
            self._started = True
            self._call("on_train_start", None, trainer=self)
            if self.comm is not None:  # as DDP does: every rank starts from rank 0's values
                self.comm.broadcast([*self.model.parameters(), *self.model.buffers(), *self._method_params])

    def _call(self, hook: str, timed: StepContext | None, **kwargs: Any) -> None:
        """Call ``hook`` on each stack member in the user's order; record each call's time in
        ``timed.timings`` and name the method and hook on failure."""
        for name, obj, caller in self._callers[hook]:
            t0 = time.perf_counter()
            before = checks.hook_state(timed) if timed is not None else None
            try:
                caller(**kwargs)
            except (MtoError, KeyboardInterrupt):
                raise
            except BaseException as exc:  # sys.exit in a plugin's hook is a plugin failure too
                raise MethodError(f"method {name!r} failed in hook {hook}: {type(exc).__name__}: {exc}") from exc
            if timed is not None:
                checks.check_hook_effects(hook, name, obj, timed, before)  # type: ignore[arg-type]
                self._sync(timed)
                timed.timings[f"{hook}/{name}"] = (time.perf_counter() - t0) * 1e3

    def _sync(self, ctx: StepContext) -> None:
        # Timings are only written on logging steps, so only those pay for a device sync.
        if ctx.logging and ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)

    # -- one step --------------------------------------------------------------------------------

    def step(self, batch: tuple[Any, Mapping[str, Any]]) -> StepContext:
        """One optimisation step on ``(inputs, {task: target})``; returns the step's context."""
        self.start()
        inputs, targets, present, slices = self._split_batch(batch)
        checks.check_inputs(inputs, self.model)
        ctx = self._new_context(present)
        ctx.inputs, ctx.targets, ctx.slices = inputs, targets, slices
        t_step = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)

        # 1. shared representation
        with self.amp.autocast():
            ctx.z = self.model.encoder(inputs)
        self._call("on_representation", ctx, ctx=ctx)

        # 2. heads and task losses
        with self.amp.autocast():
            ctx.predictions = self._heads(ctx.z, present, slices, ctx)
            ctx.task_losses = self._task_loss_values(ctx.predictions, targets, present)
        ctx.losses = ctx.raw_losses = self._union_losses(ctx, torch.stack(ctx.task_losses))
        self._call("on_task_losses", ctx, ctx=ctx)

        # 3. gradients: one backward, or per-task gradients -> gradient methods -> update. The
        # finiteness of losses and gradients is read once per path, before the optimiser step.
        losses = (ctx.losses, *ctx.extra_losses.values())
        if (self.space is not None or self.amp.scaler is not None) and self._nonfinite(ctx, *losses, what="loss"):
            return self._skip(ctx, t_step)
        t0 = time.perf_counter()
        if self.space is None:
            objective = (ctx.weights * ctx.losses).sum() + sum(ctx.extra_losses.values())
            self.amp.scale(objective).backward()
            if self.comm is not None:
                self.comm.reduce_grads([*self.model.parameters(), *self._method_params])
            if self.amp.scaler is None and self._nonfinite(ctx, *losses, what="loss", grads=self._grads()):
                return self._skip(ctx, t_step)
        elif self.amp.scaler is not None and not bool(ctx.grads_finite()):
            assert self.engine is not None  # scaled G overflowed: solvers never see it; the scaler skips
            self.amp.mark_overflow(self.engine.shared)
        else:
            try:
                self._call("on_shared_grads", ctx, ctx=ctx)
            except MtoError as exc:  # a solver refusing a NaN G is the step's fault: the policy decides
                if refused_nonfinite_grads(self, ctx, exc):
                    return self._skip(ctx, t_step)
                raise
            update = ctx.update if ctx.update is not None else ctx.grads.sum(0)
            assert self.engine is not None
            self.engine.apply(ctx, update, self._non_shared_parameters())
            if self.comm is not None:
                self.comm.reduce_grads(self._rank_local_grads(ctx))
            if self._nonfinite(ctx, update, what="update", grads=self._grads()):
                return self._skip(ctx, t_step)
        self._sync(ctx)
        ctx.timings["backward"] = (time.perf_counter() - t0) * 1e3

        # 4. optimiser, then post-step state updates
        if self.amp.step(self.optimizer):
            self._amp_skipped(ctx)
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self._call("on_after_step", ctx, ctx=ctx)
        self._finish(ctx, t_step)
        return ctx

    # -- step helpers ----------------------------------------------------------------------------

    def _split_batch(self, batch: Any) -> tuple[Any, Mapping[str, Any], tuple[str, ...], dict[str, slice] | None]:
        """``(inputs, targets, present tasks, per-task slices)`` of a batch.

        Single-input batches are ``(inputs, {task: target})``. Multi-input batches (Office: each
        task has its own images) are ``{task: (inputs, target)}``: the inputs are concatenated along
        the batch dimension so the encoder runs once, and each head reads its own slice of ``Z``.
        (BatchNorm therefore sees the union batch, unlike LibMTL's one encoder pass per task.)
        """
        if isinstance(batch, Mapping):
            return self._split_multi_input(batch)
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Mapping)):
            raise BatchError("a batch must be a pair (inputs, {task_name: target}) or, multi-input, "
                             "{task_name: (inputs, target)}; got " + type(batch).__name__
                             + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
        inputs, targets = batch
        self._check_task_names(targets)
        # A missing or None target leaves that task out of this step (partial labels).
        present = tuple(t for t in self.task_names if targets.get(t) is not None)
        if not present:
            raise BatchError(f"batch has no target for any task; expected some of {list(self.task_names)}")
        return inputs, targets, present, None

    def _split_multi_input(self, batch: Mapping[str, Any]) -> tuple[Any, Mapping[str, Any], tuple[str, ...], dict[str, slice]]:
        self._check_task_names(batch)
        present = tuple(t for t in self.task_names if batch.get(t) is not None)
        if not present:
            raise BatchError(f"batch has no target for any task; expected some of {list(self.task_names)}")
        parts, targets, slices, start = [], {}, {}, 0
        for t in present:
            item = batch[t]
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Tensor)):
                raise BatchError(f"multi-input batch entry for task {t!r} must be a pair (inputs tensor, target)")
            parts.append(item[0])
            targets[t] = item[1]
            slices[t] = slice(start, start + item[0].shape[0])
            start += item[0].shape[0]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise BatchError(f"multi-input batches need inputs of one shape per sample to share the encoder; got {sorted(shapes)}")
        return torch.cat(parts), targets, present, slices

    def _check_task_names(self, targets: Mapping[str, Any]) -> None:
        unknown = sorted(set(targets) - set(self.task_names))
        if unknown:
            raise BatchError(f"batch has targets for unknown task(s) {unknown}; the trainer's tasks are {list(self.task_names)}")

    def _heads(self, z: Any, present: Sequence[str], slices: Mapping[str, slice] | None,
               ctx: StepContext | None = None) -> dict[str, Any]:
        inputs = {t: z for t in present}
        if ctx is not None and self.engine is not None and isinstance(z, Tensor) and z.requires_grad:
            # One alias of Z per head: task t's loss then reaches Z only through its own alias, so
            # one autograd call gives every ∂L_t/∂Z and traverses each head once (grad of a
            # stacked loss's element would run every head, the others with zeros).
            inputs = {t: z.view_as(z) for t in present}
            ctx.head_inputs = tuple(inputs.values())
        if slices is None:
            return {t: self.model.heads[t](inputs[t]) for t in present}
        return {t: self.model.heads[t](inputs[t][slices[t]]) for t in present}

    def _new_context(self, present: tuple[str, ...]) -> StepContext:
        ref = next(self.model.parameters())
        ctx = StepContext(
            tasks=present,
            all_tasks=self.task_names,
            step=self.global_step,
            epoch=self.epoch,
            space=self.space,
            engine=self.engine,
            logging=self.logger is not None and self.global_step % self.log_every == 0,
            device=ref.device,
        )
        # a weak reference: a closure over ctx stored on ctx is a reference cycle, which kept each
        # step's gradients and graph alive until the cyclic garbage collector ran
        ref = weakref.ref(ctx)
        ctx._recompute = lambda train_mode: self._recompute_losses(ref(), train_mode)
        return ctx

    def _task_losses(self, preds: Mapping[str, Any], targets: Mapping[str, Any], present: Sequence[str]) -> Tensor:
        return torch.stack(self._task_loss_values(preds, targets, present))

    def _task_loss_values(self, preds: Mapping[str, Any], targets: Mapping[str, Any],
                          present: Sequence[str]) -> tuple[Tensor, ...]:
        by_name = {t.name: t for t in self.tasks}
        values = []
        for name in present:
            checks.check_target(name, preds[name], targets[name])
            try:
                value = by_name[name].loss(preds[name], targets[name])
            except Exception as exc:
                raise BatchError(f"loss of task {name!r} failed on this batch ({type(exc).__name__}: {exc}); "
                                 "check the target's shape and dtype against the head's prediction") from exc
            if not isinstance(value, Tensor) or value.dim() != 0:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise BatchError(f"loss of task {name!r} must be a scalar tensor, got {shape}")
            values.append(value)
        return tuple(values)

    def _union_losses(self, ctx: StepContext, losses: Tensor) -> Tensor:
        """Float32 losses; under torch.distributed, the union batch's values with this rank's gradient."""
        losses = self.amp.float32(losses)
        if self.comm is None:
            return losses
        return self.comm.global_losses(losses, ctx.task_ids, len(self.task_names))

    def _rank_local_grads(self, ctx: StepContext) -> list[nn.Parameter]:
        """Parameters whose ``.grad`` still differs per rank after ``engine.apply``: parameter-space
        shared gradients are the identical aggregated update unless a regulariser added to them."""
        others = self._non_shared_parameters()
        if ctx.space == "params" and not ctx.extra_losses:
            return others
        return [*self.model.shared_parameters(), *others]

    def _amp_skipped(self, ctx: StepContext) -> None:
        ctx.skipped = True
        self.counters["amp_skipped_steps"] += 1
        ctx.log("amp/skipped_steps", float(self.counters["amp_skipped_steps"]))
        if ctx.logging and self.amp.scaler is not None:
            ctx.log("amp/scale", self.amp.scaler.get_scale())

    def _grads(self) -> list[Tensor]:
        """Gradients the optimiser would apply; none under a GradScaler, whose own inf check
        already skips the step (and a scaled overflow is not a policy violation)."""
        if self.amp.scaler is not None:
            return []
        return [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _nonfinite(self, ctx: StepContext, *values: Tensor, what: str, grads: Sequence[Tensor] = ()) -> bool:
        # One host read for all the values and gradients; the price of never letting NaN reach
        # the parameters. The 2-norms are one fused kernel on CUDA (and vectorised on CPU) but
        # overflow from ~1e19: a flagged gradient is confirmed by the exact max-abs norm.
        flags = [torch.isfinite(v.detach()).all() for v in values]
        if grads:
            flags.append(torch.isfinite(torch.stack(torch._foreach_norm(list(grads)))).all())
        bad = (~torch.stack(flags)).tolist()
        if grads and bad[-1]:
            bad[-1] = not bool(torch.isfinite(torch.stack(torch._foreach_norm(list(grads), float("inf")))).all())
        if self.comm is not None:  # every rank must take the same branch (collectives follow)
            bad = self.comm.any(bad, ctx.device)
        if not any(bad):
            return False
        if self.nonfinite == "raise":
            raise NonFiniteLossError(f"non-finite {nonfinite_detail(self, ctx, bad, what)}; "
                                     "nonfinite='skip' skips such steps instead")
        if not self.counters["skipped_steps"]:
            warn_first_skip(self, ctx, bad, what)
        return True

    def _skip(self, ctx: StepContext, t_step: float) -> StepContext:
        self.optimizer.zero_grad(set_to_none=True)
        ctx.skipped = True
        self.counters["skipped_steps"] += 1
        ctx.log("steps/skipped", float(self.counters["skipped_steps"]))
        self._call("on_after_step", ctx, ctx=ctx)
        self._finish(ctx, t_step)
        return ctx

    def _finish(self, ctx: StepContext, t_step: float) -> None:
        self._sync(ctx)
        step_ms = (time.perf_counter() - t_step) * 1e3
        if ctx.logging and self.logger is not None:
            self.logger.scalars(step_scalars(ctx, step_ms), ctx.step)
        self.global_step += 1

    def _non_shared_parameters(self) -> list[nn.Parameter]:
        return self.model.head_parameters() + self._method_params

    @torch.no_grad()
    def _recompute_losses(self, ctx: StepContext, train_mode: bool) -> Tensor:
        was_training = self.model.training
        self.model.train(train_mode)
        try:
            with self.amp.autocast():
                preds = self._heads(self.model.encoder(ctx.inputs), ctx.tasks, ctx.slices)
                losses = self.amp.float32(self._task_losses(preds, ctx.targets, ctx.tasks))
            return losses if self.comm is None else self.comm.global_losses(losses, ctx.task_ids, len(self.task_names))
        finally:
            self.model.train(was_training)

    # -- epochs ----------------------------------------------------------------------------------

    def fit(
        self,
        train: Iterable[Any],
        *,
        epochs: int,
        val: Iterable[Any] | None = None,
        baselines: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs, evaluating on ``val`` after each. With single-task
        ``baselines`` (``{task: {metric: value}}``) each epoch also reports ``Δp_task`` and ``Δm%``."""
        from tqdm.auto import tqdm

        from .metrics import summarise

        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise OptionError(f"epochs must be a positive integer, got {epochs!r}")
        self.start()
        train = shard_loader(train)
        for _ in range(epochs):
            set_epoch(train, self.epoch)
            # accumulated on the device: the host reads the epoch means once, not every step
            device = next(self.model.parameters()).device
            sums = torch.zeros(len(self.tasks), dtype=torch.float64, device=device)
            counts = torch.zeros(len(self.tasks), dtype=torch.float64, device=device)
            disable = not self.progress if self.progress is not None else None  # None: only on a TTY
            batches = 0
            for batches, batch in enumerate(tqdm(train, desc=f"epoch {self.epoch}", leave=False, disable=disable), 1):
                ctx = self.step(batch)
                if ctx.raw_losses is not None:
                    sums.index_add_(0, ctx.task_ids, ctx.raw_losses.detach().double())
                    counts.index_add_(0, ctx.task_ids, torch.ones_like(sums[: len(ctx.tasks)]))
            if not batches:
                raise OptionError(f"the training data yielded no batches in epoch {self.epoch}; "
                                  "fit needs a non-empty iterable of batches")
            means, seen = (sums / counts.clamp_min(1)).tolist(), (counts > 0).tolist()
            stats: dict[str, Any] = {
                "epoch": self.epoch,
                "train_loss": {t: means[i] for i, t in enumerate(self.task_names) if seen[i]},
            }
            if val is not None:
                stats["val"] = self.evaluate(val)
                if baselines is not None:
                    stats.update(summarise(stats["val"], baselines, self.tasks))
            self._call("on_epoch_end", None, trainer=self, epoch=self.epoch, stats=stats)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self._log_epoch(stats)
            self.history.append(stats)
            self.epoch += 1
        if self.logger is not None:
            self.logger.flush()
        return self.history

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any]) -> dict[str, dict[str, float]]:
        """Metrics of every task over ``loader``: ``{task: {metric: value}}``."""
        was_training = self.model.training
        self.model.eval()
        for task in self.tasks:
            for m in task.metrics:
                m.reset()
        try:
            for batch in loader:
                inputs, targets, present, slices = self._split_batch(batch)
                preds = self._heads(self.model.encoder(inputs), present, slices)
                for name in present:
                    for m in self._task(name).metrics:
                        m.update(preds[name], targets[name])
        finally:
            self.model.train(was_training)
        return {t.name: {k: v for m in t.metrics for k, v in m.compute().items()} for t in self.tasks}

    def _task(self, name: str) -> Task:
        return self.tasks[self.task_names.index(name)]

    def _log_epoch(self, stats: Mapping[str, Any]) -> None:
        if self.logger is None:
            return
        values: dict[str, float] = {f"epoch/loss/{t}": v for t, v in stats["train_loss"].items()}
        for task, metrics in stats.get("val", {}).items():
            for metric, v in metrics.items():
                values[f"metric/val/{task}/{metric}"] = v
        for key, tag in (("delta_p_task", "delta/p_task"), ("delta_m", "delta/m")):
            if key in stats:
                values[tag] = stats[key]
        self.logger.scalars(values, self.global_step)

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically: model, optimiser (including method
        parameter groups), scheduler, step and epoch, counters, history, every method's state and
        the global RNG states."""
        return {
            "format": FORMAT,
            "stack": [m.name for m in self.stack],
            "optimizer_class": type(self.optimizer).__name__,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else None,
            "methods": {m.name: m.state_dict() for m in self.stack},
            "method_params": [p.detach().clone() for p in self._method_params],
            "step": self.global_step,
            "epoch": self.epoch,
            "started": self._started,
            "counters": dict(self.counters),
            "history": list(self.history),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_fits(state, [m.name for m in self.stack], self.optimizer)
        self.model.load_state_dict(state["model"])
        # on_train_start registers method parameter groups; the optimiser state expects them
        self.start()
        if len(state["method_params"]) != len(self._method_params):
            raise MtoError(f"checkpoint has {len(state['method_params'])} method parameters, "
                           f"this trainer {len(self._method_params)}")
        with torch.no_grad():
            for p, saved in zip(self._method_params, state["method_params"]):
                p.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise MtoError("checkpoint and trainer disagree on whether there is an LR scheduler")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if (state["grad_scaler"] is None) != (self.amp.scaler is None):
            raise MtoError("checkpoint and trainer disagree on whether there is a GradScaler")
        if self.amp.scaler is not None:
            self.amp.scaler.load_state_dict(state["grad_scaler"])
        for m in self.stack:
            m.load_state_dict(state["methods"][m.name])
        self.global_step, self.epoch = state["step"], state["epoch"]
        self.counters = dict(state["counters"])
        self.history = list(state["history"])
        set_rng_state(state["rng"])

    def save_checkpoint(self, path: str | Path, *, meta: Mapping[str, Any] | None = None) -> None:
        """Write a checkpoint atomically (rank 0 only); it loads with ``weights_only=True``.
        ``meta`` (plain values, e.g. the run's config) is stored beside the state. Refuses, keeping
        the previous file, a model with non-finite values or state a weights-only load refuses."""
        if is_rank_zero():
            check_finite_model(self.model, path)
            state = self.state_dict()
            for name, method_state in state["methods"].items():
                check_plain(method_state, f"the state of method {name!r}")
            if meta is not None:
                check_plain(dict(meta), "the checkpoint's meta")
                state["meta"] = dict(meta)
            save_atomic(state, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer; a file that
        is unreadable or does not fit raises one :class:`CheckpointError` naming it."""
        ref = next(self.model.parameters())
        state = load_checkpoint(path, map_location=ref.device)
        with checkpoint_errors(path):
            self.load_state_dict(state)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise OptionError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    for i, g in enumerate(optimizer.param_groups):
        lr = g.get("lr")
        if isinstance(lr, (int, float)) and not (lr == lr and abs(lr) != float("inf")):
            raise OptionError(f"learning rate of optimizer group {i} must be a finite number, got {lr!r}")
