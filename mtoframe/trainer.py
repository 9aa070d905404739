"""The trainer: a loop around a :class:`~mtoframe.Stack`, readable top to bottom in :meth:`Trainer.step`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from . import checks
from .amp import MixedPrecision
from .batching import head_outputs, recompute, split_batch, task_losses
from .checkpoint import load as load_checkpoint
from .context import StepContext
from .distributed import Communicator, is_distributed, set_epoch, shard_loader
from .epochloss import EpochLosses
from .errors import MtoError, OptionError
from .model import MultiTaskModel, Task, check_tasks
from .modes import ensure_training, mode
from .nonfinite import NonFinitePolicy
from .resume import checkpoint_errors
from .stack import Stack
from .tblog import RunLogger, epoch_scalars, is_rank_zero, run_hparams
from .trainer_state import load_trainer_state, save_trainer_checkpoint, trainer_state


class Trainer:
    """Trains a :class:`MultiTaskModel` on its tasks with a stack of MTO methods.

    Each step is ``encoder -> stack.represent -> heads -> losses -> stack.backward ->
    optimizer.step() -> stack.after_step``: the gradients are the :class:`~mtoframe.Stack`'s, so
    a stack in an own training loop gives the same ``.grad`` as here.

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
        (``is_grads_batched``) instead of a loop at any ``T``; faster on GPUs, not supported by
        every op. From ``gradients.BATCHED_MIN_TASKS`` tasks on the engine vmaps the encoder's
        per-task backward passes by itself.
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
        if scheduler_interval not in ("epoch", "step"):
            raise OptionError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        tasks = list(tasks)
        check_tasks(model, tasks)
        checks.check_optimizer(optimizer)
        checks.check_optimizer_params(optimizer, model)
        self.model = model
        self.tasks = tasks
        self.task_names = tuple(t.name for t in tasks)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.progress = progress
        self.stack = Stack(methods, tasks=self.task_names, encoder=model.encoder, log_every=log_every,
                           nonfinite=nonfinite, batched_grads=batched_grads, grad_scaler=grad_scaler, plugins=plugins)
        self.stack.parameter_names = {id(p): n for n, p in model.named_parameters()}
        # every parameter, trainable now or not: the stack skips those that do not require grad
        self._shared = list(model.encoder.parameters())
        self._heads = {t: list(model.heads[t].parameters()) for t in self.task_names}
        self.amp = MixedPrecision(amp, grad_scaler, next(model.parameters()).device)
        self.comm = Communicator() if is_distributed() else None
        self.history: list[dict[str, Any]] = []
        self._started = False
        self.logger = None
        if log_dir is not None and is_rank_zero():
            self.logger = RunLogger(log_dir, hparams=run_hparams(self.stack, optimizer, hparams))
            self.stack.writer = self.logger.writer

    @property
    def grad_space(self) -> str | None:
        """The stack's gradient space (None: one backward of the weighted losses)."""
        return self.stack.grad_space

    @property
    def counters(self) -> dict[str, int]:
        return self.stack.counters

    @property
    def global_step(self) -> int:
        return self.stack.step

    @global_step.setter
    def global_step(self, value: int) -> None:
        self.stack.step = value

    @property
    def epoch(self) -> int:
        return self.stack.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.stack.epoch = value

    def start(self) -> None:
        """Start the stack once (``on_train_start``) and give the methods' parameters their own
        optimiser groups (``step`` and ``fit`` call it)."""
        if not self._started:
            self._started = True
            for group in self.stack.param_groups():
                self.optimizer.add_param_group(group)
            if self.comm is not None:  # as DDP does: every rank starts from rank 0's values
                self.comm.broadcast([*self.model.parameters(), *self.model.buffers()])

    # -- one step --------------------------------------------------------------------------------

    def step(self, batch: tuple[Any, Mapping[str, Any]]) -> StepContext:
        """One optimisation step on ``(inputs, {task: target})``; returns the step's context.

        A model left in eval mode is switched to training mode; a submodule the user put in eval
        mode inside a training model (frozen batch-norm statistics) stays so."""
        self.start()
        inputs, targets, present, slices = split_batch(batch, self.task_names)
        checks.check_inputs(inputs, self.model)
        ctx = self.stack.begin(present, device=next(self.model.parameters()).device)
        ctx.inputs, ctx.targets, ctx.slices = inputs, dict(targets), slices
        try:
            self._step(ctx)
        except BaseException:
            self.stack.abandon()  # a failed step leaves no open step behind: the next one may run
            raise
        return ctx

    def _step(self, ctx: StepContext) -> None:
        ensure_training(self.model)  # not model.train(): it would undo a submodule's deliberate eval()
        self.optimizer.zero_grad(set_to_none=True)

        # 1. shared representation, then the stack's on_representation
        with self.amp.autocast():
            z = self.model.encoder(ctx.inputs)
        head_inputs = self.stack.represent(z)

        # 2. heads and task losses
        with self.amp.autocast():
            ctx.predictions = head_outputs(self.model.heads, head_inputs, ctx.slices)
            losses = task_losses(self.tasks, ctx.predictions, ctx.targets)

        # 3. the stack's gradients (one backward, or per-task gradients -> methods -> update)
        self.stack.backward(losses, features=ctx.z, shared_params=self._shared, task_params=self._heads)

        # 4. optimiser (not on a skipped non-finite step), then post-step state updates
        if not ctx.skipped:
            if self.amp.step(self.optimizer):
                self.amp.count_skip(ctx, self.counters)
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
        again = recompute(self.model, self.tasks, self.amp, (ctx.inputs, ctx.targets, ctx.tasks, ctx.slices))
        self.stack.after_step(ctx, recompute_losses=again)

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
            losses = EpochLosses(self.task_names)
            disable = not self.progress if self.progress is not None else None  # None: only on a TTY
            batches = 0
            for batch in tqdm(train, desc=f"epoch {self.epoch}", leave=False, disable=disable):
                batches += 1
                losses.add(self.step(batch))
            if not batches:
                raise OptionError(f"the training data yielded no batches in epoch {self.epoch}; "
                                  "fit needs a non-empty iterable of batches")
            stats: dict[str, Any] = {"epoch": self.epoch, "train_loss": losses.means()}
            if val is not None:
                stats["val"] = self.evaluate(val)
                if baselines is not None:
                    stats.update(summarise(stats["val"], baselines, self.tasks))
            self.stack.end_epoch(stats)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            if self.logger is not None:
                self.logger.scalars(epoch_scalars(stats), self.global_step)
            self.history.append(stats)
        if self.logger is not None:
            self.logger.flush()
        return self.history

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any]) -> dict[str, dict[str, float]]:
        """Metrics of every task over ``loader``: ``{task: {metric: value}}``."""
        for task in self.tasks:
            for m in task.metrics:
                m.reset()
        by_name = {t.name: t for t in self.tasks}
        with mode(self.model, train=False):
            for batch in loader:
                inputs, targets, present, slices = split_batch(batch, self.task_names)
                preds = head_outputs(self.model.heads, dict.fromkeys(present, self.model.encoder(inputs)), slices)
                for name in present:
                    for m in by_name[name].metrics:
                        m.update(preds[name], targets[name])
        return {t.name: {k: v for m in t.metrics for k, v in m.compute().items()} for t in self.tasks}

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically: model, optimiser (including method
        parameter groups), scheduler, step and epoch, counters, history, every method's state and
        the global RNG states."""
        return trainer_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_trainer_state(self, state)

    def save_checkpoint(self, path: str | Path, *, meta: Mapping[str, Any] | None = None) -> None:
        """Write a checkpoint atomically (rank 0 only); it loads with ``weights_only=True``.
        ``meta`` (plain values, e.g. the run's config) is stored beside the state. Refuses, keeping
        the previous file, a model with non-finite values or state a weights-only load refuses."""
        save_trainer_checkpoint(self, path, meta)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer; a file that
        is unreadable or does not fit raises one :class:`CheckpointError` naming it."""
        state = load_checkpoint(path, map_location=next(self.model.parameters()).device)
        with checkpoint_errors(path):
            self.load_state_dict(state)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
