"""The hook contract between the trainer and MTO methods.

Every method is a plugin object registered with a per-trainer :class:`pluggy.PluginManager`.
The trainer calls each hook **once per method, in the order of the user's stack** (never in
pluggy's last-registered-first order), times each call, and wraps any exception in a
:class:`mtoframe.errors.MethodError` naming the method and the hook.

One training step runs the hooks in this order (see :meth:`mtoframe.trainer.Trainer.step`)::

    Z = encoder(x)          -> on_representation(ctx)
    L = heads(Z), losses     -> on_task_losses(ctx)
    per-task gradients       -> on_shared_grads(ctx)     (only if a method needs them)
    optimizer.step()         -> on_after_step(ctx)

Lifecycle hooks: :func:`mtoframe_register` (discovery), :func:`on_train_start` (once, before
the first step) and :func:`on_epoch_end` (after each epoch of :meth:`Trainer.fit`).

A method must also work when the trainer is absent: :func:`mtoframe.aggregate` calls only
``on_shared_grads`` on a bare context, so lazy state (solver problems, EMA buffers) is built
on first use from ``ctx.num_tasks`` rather than only in ``on_train_start``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .context import StepContext
    from .registry import Registry
    from .trainer import Trainer

PROJECT = "mtoframe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Version of this hook contract. A plugin module may declare the range it supports with a
#: module attribute ``MTOFRAME_HOOK_API = ">=1,<2"`` (a PEP 440 specifier); a plugin whose range
#: excludes this version is reported by ``mtoframe plugins`` and not loaded.
HOOK_API_VERSION = "1.0"


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
def on_train_start(trainer: Trainer) -> None:
    """Called once before the first step of a trainer (or on the first ``step`` call).

    :param trainer: the trainer. A method may allocate state sized by ``len(trainer.tasks)``,
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
        representation (``D = numel(Z)``), per ``ctx.space``. Computed once, lazily, cached.

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
def on_epoch_end(trainer: Trainer, epoch: int, stats: dict[str, Any]) -> None:
    """Called at the end of each epoch of :meth:`Trainer.fit`.

    :param epoch: zero-based index of the epoch that just finished.
    :param stats: ``{"train_loss": {task: mean loss}, "val": {task: {metric: value}}, ...}``.
        ``trainer.history`` holds the same for all earlier epochs.

    For epoch-level state: DWA's loss ratios, STCH's warm-up and nadir, GradNorm's initial losses.
    """
