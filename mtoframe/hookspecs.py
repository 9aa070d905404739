"""The hook contract between the trainer and MTO methods.

Every method is a plugin object registered with a per-stack :class:`pluggy.PluginManager`.
The :class:`mtoframe.Stack` (which the Trainer runs) calls each hook **once per method, in the
order of the user's stack** (never in pluggy's last-registered-first order), times each call, and
wraps any exception in a :class:`mtoframe.errors.MethodError` naming the method and the hook.

One training step runs the hooks in this order (see :meth:`mtoframe.trainer.Trainer.step`)::

    Z = encoder(x)          -> stack.represent(Z)     -> on_representation(ctx)  (optional in own loops)
    L = heads(Z), losses     -> stack.backward(L, ...) -> on_task_losses(ctx)
    per-task gradients                                 -> on_shared_grads(ctx)    (only if a method needs them)
    optimizer.step()         -> stack.after_step(ctx)  -> on_after_step(ctx)

Lifecycle hooks: :func:`mtoframe_register` (discovery), :func:`on_train_start` (once, before
the first step) and :func:`on_epoch_end` (after each epoch). Both receive a :class:`MethodHost`:
the little a method may use of what runs it (the :class:`~mtoframe.Stack`), never the Trainer.

A method must also work when the trainer is absent: :func:`mtoframe.aggregate` calls only
``on_shared_grads`` on a bare context, so lazy state (solver problems, EMA buffers) is built
on first use from ``ctx.num_tasks`` rather than only in ``on_train_start``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from .context import StepContext
    from .method import Method
    from .registry import Registry

PROJECT = "mtoframe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Version of this hook contract. A plugin module may declare the range it supports with a
#: module attribute ``MTOFRAME_HOOK_API = ">=1,<2"`` (a PEP 440 specifier); a plugin whose range
#: excludes this version is reported by ``mtoframe plugins`` and not loaded.
HOOK_API_VERSION = "1.0"


class ModelView(Protocol):
    """What ``on_train_start`` may read of the model."""

    @property
    def encoder(self) -> nn.Module:
        """The module producing the shared features (GradNorm's layer, GradVac's groups)."""
        ...

    def parameters(self) -> Iterator[nn.Parameter]:
        """The encoder's parameters (their dtype and device are the model's)."""
        ...

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable shared parameters, in the order of the gradient matrix's columns."""
        ...


class MethodHost(Protocol):
    """What ``on_train_start`` and ``on_epoch_end`` may use of the stack running the method."""

    @property
    def task_names(self) -> tuple[str, ...]:
        """Every task's name, in the order of ``ctx.all_tasks`` (per-task state is sized by it)."""
        ...

    @property
    def tasks(self) -> Sequence[object]:
        """One entry per task (``len(host.tasks)``)."""
        ...

    @property
    def model(self) -> ModelView: ...

    def add_method_parameters(self, method: Method, params: Iterable[nn.Parameter], *,
                              lr: float | None = None) -> None:
        """Give the method's learnable parameters their own optimiser group, without weight decay."""
        ...


@hookspec
def mtoframe_register(registry: Registry) -> None:
    """Register the methods a plugin distribution provides.

    Called once per plugin module when plugins are discovered through the ``mtoframe``
    entry-point group.

    :param registry: call ``registry.add(MethodClass)`` for each :class:`mtoframe.Method`
        subclass. The method's ``name``, ``Options`` class, ``summary`` and ``paper`` are read
        from the class; the distribution and version are filled in from the entry point.
    """


@hookspec
def on_train_start(trainer: MethodHost) -> None:
    """Called once before the first step (by ``Trainer.start``, or a Stack's first ``param_groups``
    or ``backward`` call).

    :param trainer: the stack running the method (a :class:`MethodHost`; the name is kept for
        existing plugins). A method may allocate state sized by ``len(trainer.tasks)``,
        compile solver problems, and register learnable parameters with
        ``trainer.add_method_parameters(self, params, ...)`` (a separate optimiser parameter
        group without weight decay).

    Must not change the model or the stack.
    """


@hookspec
def on_representation(ctx: StepContext) -> None:
    """Called after the encoder, before the heads.

    :param ctx: ``ctx.z`` holds the shared representation ``Z`` (``B×C×H×W`` or ``B×C``).

    A method may read ``ctx.z`` or replace it (the heads read whatever ``ctx.z`` is when all
    methods have run; gradients flow back through the replacement). It must not detach it.
    """


@hookspec
def on_task_losses(ctx: StepContext) -> None:
    """Called after the heads, with one loss per present task.

    :param ctx: ``ctx.losses`` (``Tensor[T]``, differentiable), ``ctx.weights`` (``Tensor[T]``,
        ones unless an earlier method changed them), ``ctx.tasks`` (the present tasks' names).

    A method may:

    * replace ``ctx.losses`` with a differentiable transform of it (log, normalisation); the
      per-task gradients later computed are gradients of the transformed losses;
    * replace ``ctx.weights`` (loss-level weighting composes: multiply the incoming weights);
      weights may require grad when the method learns them (UW);
    * add named regularisers with ``ctx.add_loss(name, value)``; their gradient is added
      **after** any gradient aggregation;
    * read representation gradients with ``ctx.rep_grads(differentiable=...)``.
    """


@hookspec
def on_shared_grads(ctx: StepContext) -> None:
    """Called when the stack contains gradient-level methods, after all loss hooks.

    :param ctx: ``ctx.grads`` is the ``T×D`` matrix whose rows are the gradients of
        ``weights[t] * losses[t]`` with respect to the shared parameters (``D = P``) or to the
        representation (``D = numel(Z)``), per ``ctx.grad_space``. Computed once, lazily, cached.

    A *transform* replaces ``ctx.grads`` with another ``T×D`` matrix (PCGrad, scaling); it must
    not modify the matrix in place (it may share storage with the cached saliency).
    An *aggregator* (last gradient method of a stack) calls
    ``ctx.set_update(d, head_weights=...)`` with the final ``D`` vector; without one the
    update is the sum of the rows. ``head_weights`` (``Tensor[T]``) scales what each task's head
    receives; by default heads get their weighted task gradient unchanged.
    """


@hookspec
def on_after_step(ctx: StepContext) -> None:
    """Called after ``optimizer.step()`` (also when a non-finite step was skipped:
    ``ctx.skipped`` says so).

    A method may update internal state (FAMO's logits, counters); ``ctx.recompute_losses()``
    gives the losses of the same batch under the updated parameters, without gradient.
    """


@hookspec
def on_epoch_end(trainer: MethodHost, epoch: int, stats: dict[str, Any]) -> None:
    """Called at the end of each epoch (:meth:`Trainer.fit`, or :meth:`mtoframe.Stack.end_epoch`).

    :param trainer: the stack running the method (a :class:`MethodHost`).
    :param epoch: zero-based index of the epoch that just finished.
    :param stats: ``{"train_loss": {task: mean loss}, "val": {task: {metric: value}}, ...}``.

    For epoch-level state: DWA's loss ratios, STCH's warm-up and nadir, GradNorm's initial losses.
    """
