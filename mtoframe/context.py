""":class:`StepContext`: what flows through the hooks during one training step."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import MtoError
from .gradcache import GradientCache
from .numerics import gram as gram_matrix

if TYPE_CHECKING:
    from .gradients import GradientEngine
    from .method import Space


class StepContext:
    """State of one step, shared by every method's hooks.

    Attributes that methods read:

    ``step``, ``epoch``
        global step index (0-based) and epoch.
    ``tasks``
        names of the tasks present in this batch (partial labels leave a task out); every
        per-task tensor below is indexed in this order.
    ``task_ids``
        ``LongTensor[T]``: position of each present task in the trainer's full task list
        (``all_tasks``), for methods that keep per-task state.
    ``z``
        the shared representation (may be replaced in ``on_representation``).
    ``predictions``, ``targets``
        per present task.
    ``losses``, ``weights``
        ``Tensor[T]``; see :func:`mtoframe.hookspecs.on_task_losses`.
    ``grads``
        lazily computed ``T×D`` gradient matrix in ``grad_space``; see ``on_shared_grads``.
    ``logging``
        True on steps whose scalars are written; compute diagnostics only then.
    """

    def __init__(
        self,
        *,
        tasks: tuple[str, ...],
        all_tasks: tuple[str, ...] | None = None,
        losses: Tensor | None = None,
        step: int = 0,
        epoch: int = 0,
        grad_space: Space | None = None,
        engine: GradientEngine | None = None,
        logging: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.step = step
        self.epoch = epoch
        self.tasks = tasks
        self.all_tasks = all_tasks if all_tasks is not None else tasks
        self.device = device if device is not None else (losses.device if losses is not None else torch.device("cpu"))
        # task_ids and weights are built on first read: mtoframe.aggregate's stateless methods
        # read neither, and two tensor constructions are a measurable part of a small call
        index = {t: i for i, t in enumerate(self.all_tasks)}
        self._task_positions = [index[t] for t in tasks]
        self._task_ids: Tensor | None = None
        #: the space of ``grads``' rows (``Method.grad_space`` of the stack; None: no gradient method)
        self.grad_space = grad_space
        self.logging = logging
        self.inputs: Any = None
        self.targets: dict[str, Any] = {}
        #: multi-input batches: each task's rows of ``z`` (None for single-input batches)
        self.slices: dict[str, slice] | None = None
        self.z: Tensor | None = None
        self.predictions: dict[str, Any] = {}
        self._losses = losses
        #: the losses as the stack received them, stacked (``losses`` may be a transform of them)
        self.raw_losses: Tensor | None = losses
        self._weights_dtype = dtype if dtype is not None else losses.dtype if losses is not None else torch.float32
        self._weights_device = self.device
        self._weights: Tensor | None = None
        #: True until a method assigns ``weights`` (lets the engine skip scaling rows by ones)
        self.unit_weights = True
        self.extra_losses: dict[str, Tensor] = {}
        #: this step's gradients, owned by the engine (see :mod:`mtoframe.gradcache`)
        self.grad_cache = GradientCache()
        self.update: Tensor | None = None
        self.head_weights: Tensor | None = None
        self.scalars: dict[str, Tensor | float] = {}
        self.timings: dict[str, float] = {}
        self.skipped = False
        #: the stack's gradient engine (None when no method needs per-task gradients)
        self.engine = engine
        #: set by :meth:`mtoframe.Stack.after_step` while ``on_after_step`` runs (see :meth:`recompute_losses`)
        self.loss_recomputer: Callable[[bool], Tensor] | None = None

    # -- losses --------------------------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def losses(self) -> Tensor:
        if self._losses is None:
            raise MtoError("this context carries no losses (mtoframe.aggregate was called without losses=)")
        return self._losses

    @losses.setter
    def losses(self, value: Tensor) -> None:
        if self._losses is not None and value.shape != self._losses.shape:
            raise MtoError(f"ctx.losses must keep shape {tuple(self._losses.shape)}, got {tuple(value.shape)}")
        if self._losses is None:
            # the first losses fix the weights' dtype and device (float64 models get float64 weights)
            if self._weights is None:
                self._weights_dtype, self._weights_device = value.dtype, value.device
            else:
                self._weights = self._weights.to(dtype=value.dtype, device=value.device)
        self._losses = value
        self.grad_cache.drop_all()  # gradients of the old losses are stale now

    @property
    def task_ids(self) -> Tensor:
        """``LongTensor[T]``: position of each present task in ``all_tasks``."""
        if self._task_ids is None:
            self._task_ids = torch.tensor(self._task_positions, dtype=torch.long, device=self.device)
        return self._task_ids

    @task_ids.setter
    def task_ids(self, value: Tensor) -> None:
        self._task_ids = value

    @property
    def weights(self) -> Tensor:
        """``Tensor[T]`` loss weights (ones until a loss-level method sets them)."""
        if self._weights is None:
            self._weights = torch.ones(len(self.tasks), device=self._weights_device, dtype=self._weights_dtype)
        return self._weights

    @weights.setter
    def weights(self, value: Tensor) -> None:
        if value.shape != (len(self.tasks),):
            raise MtoError(f"ctx.weights must have shape {(len(self.tasks),)}, got {tuple(value.shape)}")
        self._weights = value
        self.unit_weights = False
        self.grad_cache.drop_grads()

    @property
    def has_losses(self) -> bool:
        return self._losses is not None

    def add_loss(self, name: str, value: Tensor) -> None:
        """Add a named regulariser; its gradient is added after gradient aggregation."""
        if value.dim() != 0:
            raise MtoError(f"regulariser {name!r} must be a scalar tensor, got shape {tuple(value.shape)}")
        if name in self.extra_losses:
            raise MtoError(f"regulariser {name!r} was added twice in one step")
        self.extra_losses[name] = value
        self.log(f"reg/{name}", value)

    # -- gradients -----------------------------------------------------------------------------

    @property
    def grads(self) -> Tensor:
        """``T×D`` matrix: row t is the gradient of ``weights[t] * losses[t]`` in ``grad_space``."""
        cache = self.grad_cache
        if cache.grads is None:
            if self.engine is None:
                raise MtoError("no gradient matrix: this context has no gradient engine and none was given")
            cache.grads = self.engine.task_grads(self)
        return cache.grads

    @grads.setter
    def grads(self, value: Tensor) -> None:
        if value.dim() != 2 or value.shape[0] != self.num_tasks:
            raise MtoError(f"ctx.grads must be a {self.num_tasks}×D matrix, got shape {tuple(value.shape)}")
        self.grad_cache.drop_grads()
        self.grad_cache.grads = value

    @property
    def has_grads(self) -> bool:
        return self.grad_cache.grads is not None

    @property
    def raw_grads(self) -> Tensor | None:
        """The gradient matrix as first computed, before any transform (for logging)."""
        return self.grad_cache.raw_grads

    @property
    def head_inputs(self) -> tuple[Tensor, ...] | None:
        """The per-head aliases of ``z`` the Stack gave the heads (see :mod:`mtoframe.gradcache`)."""
        return self.grad_cache.head_inputs

    def grads_finite(self) -> Tensor:
        """Device boolean: every entry of the current ``grads`` is finite (cached until ``grads``
        is replaced; no host sync). A stateful method keeps its state when it is False: the
        trainer then skips or raises on the step."""
        cache = self.grad_cache
        if cache.grads_finite is None:
            cache.grads_finite = torch.isfinite(self.grads).all()
        return cache.grads_finite

    def gram(self) -> Tensor:
        """Gram matrix ``G Gᵀ`` of the current ``grads`` (cached until ``grads`` is replaced)."""
        cache = self.grad_cache
        if cache.gram is None:
            cache.gram = gram_matrix(self.grads)
        return cache.gram

    def rep_grads(self, *, differentiable: bool = False) -> Tensor:
        """Per-task gradients of ``losses`` w.r.t. ``z``, unweighted: ``Tensor[T, *z.shape]``.

        With ``differentiable=True`` they are computed with ``create_graph=True`` so that a loss
        built from them trains the model (Rep-MTL). Computed once per step and shared: a plain
        request after a differentiable one gets the detached tensor, not a recomputation.
        """
        if self.engine is None:
            raise MtoError("representation gradients need a gradient engine (no representation in this context)")
        cache = self.grad_cache
        if cache.rep_grads is None or (differentiable and not cache.rep_grads_differentiable):
            cache.rep_grads = self.engine.rep_grads(self, differentiable=differentiable)
            cache.rep_grads_differentiable = differentiable
        return cache.rep_grads if differentiable else cache.rep_grads.detach()

    def set_update(self, update: Tensor, *, head_weights: Tensor | None = None) -> None:
        """Set the final update (length ``D``); what an aggregator does. ``head_weights``
        (``Tensor[T]``) scales each task's head gradient."""
        if self.update is not None:
            raise MtoError("the update was set twice in one step: only one aggregator may run")
        expected = self.grads.shape[1] if self.has_grads else None
        if update.dim() != 1 or (expected is not None and update.shape[0] != expected):
            raise MtoError(f"update must be a vector of length {expected}, got shape {tuple(update.shape)}")
        if head_weights is not None and head_weights.shape != (self.num_tasks,):
            raise MtoError(f"head_weights must have shape ({self.num_tasks},), got {tuple(head_weights.shape)}")
        self.update = update
        self.head_weights = head_weights

    # -- after the step ------------------------------------------------------------------------

    def recompute_losses(self, *, train_mode: bool = True) -> Tensor:
        """Losses of the same batch under the updated parameters, without gradient (FAMO).

        ``train_mode=False`` runs the forward in eval mode (BatchNorm uses running statistics
        and does not update them)."""
        if self.loss_recomputer is None:
            raise MtoError("recompute_losses is only available inside on_after_step of a step whose "
                           "after_step was given recompute_losses")
        return self.loss_recomputer(train_mode)

    # -- observability -------------------------------------------------------------------------

    def log(self, tag: str, value: Tensor | float) -> None:
        """Record a scalar (written only on logging steps; tensors are read then, not now)."""
        if self.logging:
            self.scalars[tag] = value.detach() if isinstance(value, Tensor) else value
