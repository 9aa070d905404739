"""The base of every method whose update is ``Σ_t w_t g_t`` with ``w`` a function of ``G Gᵀ``.

Nash-MTL, CAGrad, FairGrad, MGDA, IMTL-G, UPGrad and Aligned-MTL aggregate ``d = wᵀG``; PCGrad
and GradVac transform the rows into ``C G`` with a ``TxT`` coefficient matrix ``C`` that follows
from inner products alone. Either way the only work proportional to the number of parameters ``P``
is the Gram matrix ``G Gᵀ`` (computed once per step, :meth:`StepContext.gram`) and the combine
``wᵀG`` (or ``C G``); everything a subclass writes is ``TxT``.

A subclass implements :meth:`GramWeighting.weigh` only::

    class Equal(GramWeighting):
        name = "equal"
        summary = "Unit-norm gradients, summed."

        def weigh(self, gram, state, ctx):
            return gram.diagonal().clamp_min(1e-30).rsqrt()

and the base does the rest: it sizes the per-task state declared in :attr:`~GramWeighting.state_spec`
over ``ctx.all_tasks`` on first use (so ``mtoframe.aggregate`` works without a trainer) and hands
``weigh`` a :class:`TaskState` view indexed by ``ctx.task_ids`` (partial labels read and write
only the present tasks' entries); combines the rows; sets the heads' weights when ``weigh``
returns them in a :class:`Weights`; clips the update to :attr:`~GramWeighting.max_norm`; logs
``<name>/weight/<task>`` on logging steps; owns the method's :class:`~mtoframe.FailureCounter`
(``self.failures``; one :class:`~mtoframe.SolverWarning` class for every method), whose count is
part of the state; and writes ``state_dict`` / ``load_state_dict`` / ``reset``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import attrs
import torch
from torch import Tensor

from .context import StepContext
from .failures import FailureCounter
from .hookspecs import hookimpl
from .method import Method, Role
from .method_state import expect_keys
from .numerics import clip_norm, combine, to_float64
from .numerics import gram as gram_matrix
from .scaling import check_deferred

__all__ = ["GramWeighting", "StateSpec", "TaskState", "Weights"]

_CPU = torch.device("cpu")


@attrs.frozen(kw_only=True)
class StateSpec:
    """One entry of a :class:`GramWeighting`'s per-task state (float64 tensor)."""

    #: value of every entry before the first update
    init: float = 0.0
    #: one value per ordered pair of tasks (``T_allxT_all``) instead of one per task
    pairwise: bool = False
    #: a trailing axis over the column blocks of :meth:`GramWeighting.column_blocks`
    per_block: bool = False


class Weights(NamedTuple):
    """What :meth:`GramWeighting.weigh` returns when the heads are weighted too."""

    #: ``T`` weights of the update (aggregators) or ``TxT`` coefficients of the new rows (transforms)
    rows: Tensor
    #: ``T`` weights of the heads' loss gradients (None: unweighted)
    heads: Tensor | None = None


class TaskState:
    """The present tasks' view of a :class:`GramWeighting`'s state: ``state["alpha"]`` reads the
    entries of ``ctx.task_ids`` (a copy), ``state["alpha"] = value`` writes them back; absent
    tasks keep theirs. Pairwise entries read and write the ``TxT`` block of the present pairs."""

    def __init__(self, store: dict[str, Tensor], specs: Mapping[str, StateSpec], ctx: StepContext,
                 device: torch.device, block: int) -> None:
        self._store = store
        self._specs = specs
        self._ctx = ctx
        self._device = device
        self._ids: Tensor | None = None
        self.block = block

    def _index(self, name: str) -> tuple[Any, ...]:
        spec = self._specs[name]
        if self._ids is None:
            # built on first use: a method without per-task state never pays for the index tensor
            self._ids = self._ctx.task_ids.to(self._device)
        ids = self._ids
        rows: tuple[Any, ...] = (ids.unsqueeze(1), ids.unsqueeze(0)) if spec.pairwise else (ids,)
        return (*rows, self.block) if spec.per_block else rows

    def __getitem__(self, name: str) -> Tensor:
        return self._store[name][self._index(name)]

    def __setitem__(self, name: str, value: Tensor) -> None:
        target = self._store[name]
        target[self._index(name)] = value.to(device=target.device, dtype=target.dtype)


class GramWeighting(Method, abc.ABC):
    """Base of Gram-space weightings; see the module docstring. Subclasses set the usual
    :class:`~mtoframe.Method` class attributes and implement :meth:`weigh`."""

    roles = Role.AGGREGATOR
    checks_own_scale = True
    #: per-task state entries by name (stored over ``ctx.all_tasks``, checkpointed under that name)
    state_spec: ClassVar[Mapping[str, StateSpec]] = {}
    #: whether :meth:`weigh` works on the host: the Gram matrix and the state are then on the CPU
    #: (one ``TxT`` transfer per step, what a CPU solver needs anyway)
    host: ClassVar[bool] = False
    #: what the method does when its solver fails, for the warning (``"keeping the previous weights"``)
    fallback: ClassVar[str] = "using the solver's last iterate"

    def __init__(self, options: Any = None, /, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        #: a transform run alone by ``mtoframe.aggregate`` (which sums the rows a transform leaves)
        #: sets that sum as the update directly: ``(1ᵀC) G`` reads ``G`` once, ``C G`` and then its
        #: sum twice. In a stack (``check_stack`` was called) a transform edits the rows, as the
        #: trainer's contract says.
        self.sums_rows = True
        # Flag arithmetic builds a new enum member each time: decided once, not every step
        self._transform = bool(self.roles & Role.TRANSFORM)

    def reset(self) -> None:
        self.failures = FailureCounter(self.name, self.fallback)
        self.task_state: dict[str, Tensor] | None = None

    def check_stack(self, stack: Sequence[Method]) -> None:
        self.sums_rows = False

    # -- what subclasses implement ----------------------------------------------------------------

    @abc.abstractmethod
    def weigh(self, gram: Tensor, state: TaskState, ctx: StepContext) -> Tensor | Weights:
        """The update's weights from the float64 Gram matrix of the present tasks' rows.

        Aggregators return ``T`` weights (``d = Σ_t w_t g_t``), transforms (``Role.TRANSFORM``) a
        ``TxT`` matrix ``C`` (new rows ``C G``); either as a :class:`Weights` to weight the heads
        too. ``gram`` and ``state`` are on the CPU when :attr:`host` is set, else on the rows'
        device; the result may be on either. A subclass without it cannot be instantiated."""

    def gram(self, ctx: StepContext, rows: Tensor) -> Tensor:
        """Gram matrix the weights are computed from (default: ``rows rowsᵀ``, cached by the
        context for the whole matrix)."""
        return ctx.gram() if rows is ctx.grads else gram_matrix(rows)

    def column_blocks(self, ctx: StepContext) -> Sequence[int] | None:
        """Widths of consecutive column blocks weighted separately (GradVac's parameter groups),
        or None for one block."""
        return None

    @property
    def max_norm(self) -> float:
        """Clip the aggregated update to this norm (``clip_grad_norm_``'s coefficient); 0: no clip."""
        return 0.0

    def extra_state(self) -> dict[str, Any]:
        """State beyond the per-task entries and the failure count (plain values or tensors)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`extra_state` (``state`` holds exactly its keys)."""

    # -- the step -------------------------------------------------------------------------------

    @hookimpl
    def on_shared_grads(self, ctx: StepContext) -> None:
        grads = ctx.grads
        transform = self._transform
        widths = self.column_blocks(ctx)
        blocks = [grads] if widths is None else list(torch.split(grads, list(widths), dim=1))
        device = _CPU if self.host else grads.device
        # the state views are built before the Gram matrix: between G Gᵀ and the combine wᵀG,
        # which both read G, other work evicts G from the cache and costs about twice its own time
        views = [self._view(ctx, device, k, len(blocks)) for k in range(len(blocks))]
        # under mtoframe.aggregate, the Gram matrix (needed anyway) decides whether the matrix must
        # be rescaled, instead of a separate pass over it; nothing has changed state yet
        check_deferred(grads, ctx.gram)
        expected = (len(ctx.tasks), len(ctx.tasks)) if transform else (len(ctx.tasks),)
        parts: list[Tensor] = []
        heads: Tensor | None = None
        last: Tensor | None = None
        for rows, view in zip(blocks, views, strict=True):
            gram = to_float64(self.gram(ctx, rows), device)
            out = self.weigh(gram, view, ctx)
            w, heads = (out.rows, out.heads) if isinstance(out, Weights) else (out, None)
            if tuple(w.shape) != expected:
                raise RuntimeError(f"{self.name}: weigh() returned shape {tuple(w.shape)}, expected {expected}")
            last = w
            parts.append(combine(w.sum(0) if transform and self.sums_rows else w, rows))
        if transform and not self.sums_rows:
            ctx.grads = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        elif transform:
            ctx.set_update(parts[0] if len(parts) == 1 else torch.cat(parts))
        else:
            update = parts[0] if len(parts) == 1 else torch.cat(parts)
            if heads is not None:
                weights = ctx.weights
                heads = heads.to(weights.device, weights.dtype)
            ctx.set_update(clip_norm(update, self.max_norm), head_weights=heads)
        self.failures.log(ctx)
        if ctx.logging and last is not None and len(blocks) == 1:
            # a transform's weight of task t is the sum of its column of C (taken on logging steps only)
            logged = last.sum(0) if transform else last
            for t, task in enumerate(ctx.tasks):
                ctx.log(f"{self.name}/weight/{task}", logged[t])

    def _view(self, ctx: StepContext, device: torch.device, block: int, n_blocks: int) -> TaskState:
        if not self.state_spec:
            return TaskState({}, self.state_spec, ctx, device, block)
        n_all = len(ctx.all_tasks)
        store = self.task_state
        if store is None or any(self._shape(spec, n_all, n_blocks) != tuple(store[name].shape)
                                for name, spec in self.state_spec.items()):
            # first use, or another task list / number of blocks: start afresh
            store = {name: torch.full(self._shape(spec, n_all, n_blocks), spec.init, dtype=torch.float64,
                                      device=device) for name, spec in self.state_spec.items()}
            self.task_state = store
        elif any(t.device != device for t in store.values()):
            store = {name: t.to(device) for name, t in store.items()}
            self.task_state = store
        return TaskState(store, self.state_spec, ctx, device, block)

    @staticmethod
    def _shape(spec: StateSpec, n_all: int, n_blocks: int) -> tuple[int, ...]:
        return (n_all, n_all)[: 2 if spec.pairwise else 1] + ((n_blocks,) if spec.per_block else ())

    # -- state ----------------------------------------------------------------------------------

    def state_entry(self, name: str) -> Tensor | None:
        """The per-task state ``name`` over every task (None before the first step)."""
        return None if self.task_state is None else self.task_state[name]

    def state_dict(self) -> dict[str, Any]:
        empty = torch.zeros(0, dtype=torch.float64)
        store = self.task_state
        entries = {name: (store[name].clone() if store is not None else empty) for name in self.state_spec}
        return {**entries, "failures": self.failures.count, **self.extra_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        extra = set(self.extra_state())
        expect_keys(self.name, state, {*self.state_spec, "failures", *extra})
        tensors = {name: state[name].detach().to(torch.float64).clone() for name in self.state_spec}
        self.task_state = tensors if all(t.numel() for t in tensors.values()) and tensors else None
        self.failures.count = int(state["failures"])
        self.load_extra_state({k: state[k] for k in extra})
