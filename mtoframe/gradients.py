"""The gradient engine: per-task gradients once per step, on the device, and applying the update.

Paths (DESIGN §4):

* no gradient method in the stack -> the trainer does a single backward of the weighted sum;
* ``params`` space -> row ``t`` is ``∂(w_t L_t)/∂θ_shared``, flattened into a preallocated
  ``T×P`` buffer, with each head traversed once: with few tasks, one ``autograd.grad`` of each
  task's own loss scalar (losses transformed by an earlier method: then ``J·G`` with ``J`` the
  ``T×T`` Jacobian of the transform); with many tasks (``T ≥ BATCHED_MIN_TASKS``), or when a
  saliency method already paid for the heads, the saliency ``∂L_t/∂Z`` (see
  :meth:`GradientEngine.rep_grads`) and then encoder VJPs of its rows, all ``T`` in one vmapped
  backward from ``BATCHED_MIN_TASKS`` tasks on (one per task below);
* ``representation`` space -> row ``t`` is ``∂(w_t L_t)/∂Z`` flattened; the aggregated ``Z``
  gradient then goes through the encoder in one backward (so the encoder always trains, unlike
  LibMTL issue 83).

Heads get ``head_weights_t · w_t · ∂L_t/∂θ_t`` from one backward restricted to the non-shared
parameters (``inputs=``), which also trains learnable loss weights. Regulariser terms
(``ctx.add_loss``) are back-propagated last, so their gradient is added after aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .context import StepContext
from .errors import MtoError

if TYPE_CHECKING:
    from .amp import MixedPrecision
    from .distributed import Communicator


#: From this many tasks on, the ``T`` encoder backward passes of the parameter-space rows run as
#: one vmapped backward (``is_grads_batched``) of the saliency's rows instead of ``T`` calls.
#: Measured, one thread (issue 17): on the ``manytask`` MLP the vmapped form costs 1.2× the
#: loop at T = 3, 0.76× at T = 10 and 0.85× at T = 40; on the ``scenes`` conv net at T = 3,
#: 1.12× (vmapped convolution backward is slower there). Both forms are exact (same products,
#: batched), so the switch changes results only by float round-off.
BATCHED_MIN_TASKS = 8


class GradientEngine:
    """Computes and applies gradients for one model's shared and task-specific parameters."""

    def __init__(self, shared: Sequence[nn.Parameter], *, batched: bool = False) -> None:
        """``batched``: vmap the per-task backward passes at any ``T`` (otherwise from
        :data:`BATCHED_MIN_TASKS` tasks on)."""
        self.shared = list(shared)
        if not self.shared:
            raise MtoError("the encoder has no trainable parameters; gradient methods need shared parameters")
        self.sizes = [p.numel() for p in self.shared]
        self.num_params = sum(self.sizes)
        self.batched = batched
        #: set by the trainer: loss scaling / float32 casts (amp.py) and rank reduction (distributed.py)
        self.amp: MixedPrecision | None = None
        self.comm: Communicator | None = None

    def _scaled(self, t: Tensor) -> Tensor:
        return self.amp.scale(t) if self.amp is not None else t

    def _unscaled(self, t: Tensor) -> Tensor:
        return self.amp.unscale(t) if self.amp is not None else t

    # -- computing -----------------------------------------------------------------------------

    def rep_grads(self, ctx: StepContext, *, differentiable: bool) -> Tensor:
        """``Tensor[T, *Z.shape]``: ``∂L_t/∂Z`` of the current (unweighted) losses.

        Each raw loss reaches ``Z`` only through its own head's alias of it, so one autograd call
        on their sum traverses every head once and yields ``R_s = ∂L_s/∂Z``; losses transformed
        by earlier methods (``log``, FAMO, ...) are then ``J R`` with ``J`` the ``T×T`` Jacobian
        of the transform. When the transformed losses reach ``Z`` by another path, or the trainer
        made no aliases, each task gets its own call instead.
        """
        z = ctx.z
        if z is None or not isinstance(z, Tensor):
            raise MtoError("representation gradients need a tensor representation ctx.z (the encoder output)")
        if not z.requires_grad:
            raise MtoError("the representation does not require grad (is the encoder frozen or run under no_grad?)")
        if _one_traversal_applies(ctx):
            return self._chained_rep_grads(ctx, differentiable=differentiable)
        losses = self._scaled(ctx.losses)
        out = []
        for t in range(ctx.num_tasks):
            (g,) = torch.autograd.grad(losses[t], z, retain_graph=True, create_graph=differentiable, allow_unused=True)
            out.append(torch.zeros_like(z) if g is None else g)
        return self._unscaled(torch.stack(out))

    def _chained_rep_grads(self, ctx: StepContext, *, differentiable: bool) -> Tensor:
        """:meth:`rep_grads` when :func:`_one_traversal_applies`: one call at the heads' aliases."""
        assert ctx.z is not None and ctx.grad_cache.head_inputs is not None and ctx.raw_losses is not None
        parts = torch.autograd.grad(self._scaled(ctx.raw_losses.sum()), ctx.grad_cache.head_inputs, retain_graph=True,
                                    create_graph=differentiable, allow_unused=True)
        rows = self._unscaled(torch.stack([torch.zeros_like(ctx.z) if g is None else g for g in parts]))
        if ctx.losses is ctx.raw_losses:
            return rows
        jac = _jacobian(ctx.losses, ctx.raw_losses, differentiable=differentiable).to(rows.dtype)
        return (jac @ rows.flatten(1)).view_as(rows)

    def task_grads(self, ctx: StepContext) -> Tensor:
        """``T×D`` matrix of gradients of ``weights[t] * losses[t]`` in ``ctx.grad_space``."""
        w = ctx.weights.detach()
        if ctx.grad_space == "representation":
            s = ctx.rep_grads(differentiable=False)
            g = s.reshape(ctx.num_tasks, -1)
        elif ctx.grad_space == "params":
            g = self._unscaled(self._param_grads(ctx))
        else:
            raise MtoError(f"unknown gradient space {ctx.grad_space!r}; allowed: 'params', 'representation'")
        if self.comm is not None:
            g = self.comm.task_matrix(g, ctx.grad_space)
        if not ctx.unit_weights:
            g = g * w.to(g.dtype).unsqueeze(1)
        ctx.grad_cache.raw_grads = g
        return g

    def _param_grads(self, ctx: StepContext) -> Tensor:
        T = ctx.num_tasks
        ref = self.shared[0]
        jac: Tensor | None = None
        batched = self.batched or T >= BATCHED_MIN_TASKS
        cache = ctx.grad_cache
        chained = cache.rep_grads is None and _one_traversal_applies(ctx)  # the graph walk, once
        if chained and not batched and cache.task_losses is not None:
            # each task's own loss scalar: its gradient runs only its head and holds nothing T×|Z|;
            # transformed losses are then J·G with J the T×T Jacobian of the transform
            per_task = [
                torch.autograd.grad(self._scaled(loss), self.shared, retain_graph=True, allow_unused=True)
                for loss in cache.task_losses
            ]
            if ctx.losses is not ctx.raw_losses:
                assert ctx.raw_losses is not None
                jac = _jacobian(ctx.losses, ctx.raw_losses, differentiable=False)
        elif ctx.z is not None and (cache.rep_grads is not None or chained):
            # the heads once (or already, for a saliency method), then one encoder VJP per task;
            # a saliency computed only for this is not cached, so it is freed with the rows
            sal = (cache.rep_grads.detach() if cache.rep_grads is not None
                   else self._chained_rep_grads(ctx, differentiable=False))
            s = self._scaled(sal).to(ctx.z.dtype)
            if batched:
                parts = torch.autograd.grad(ctx.z, self.shared, grad_outputs=s, retain_graph=True,
                                            allow_unused=True, is_grads_batched=True)
                return self._flatten_batched(parts, T)
            per_task = [
                torch.autograd.grad(ctx.z, self.shared, grad_outputs=s[t], retain_graph=True, allow_unused=True)
                for t in range(T)
            ]
        elif self.batched:  # not automatic: this vmaps the heads' and losses' backward too
            eye = torch.eye(T, dtype=ctx.losses.dtype, device=ctx.losses.device)
            parts = torch.autograd.grad(self._scaled(ctx.losses), self.shared, grad_outputs=eye, retain_graph=True,
                                        allow_unused=True, is_grads_batched=True)
            return self._flatten_batched(parts, T)
        else:
            losses = self._scaled(ctx.losses)
            per_task = [
                torch.autograd.grad(losses[t], self.shared, retain_graph=True, allow_unused=True) for t in range(T)
            ]
        out = torch.empty(T, self.num_params, dtype=ref.dtype, device=ref.device)
        for t, grads in enumerate(per_task):
            offset = 0
            for g, n in zip(grads, self.sizes, strict=True):
                if g is None:
                    out[t, offset : offset + n].zero_()
                else:
                    out[t, offset : offset + n].copy_(g.reshape(-1))
                offset += n
        return out if jac is None else jac.to(out.dtype) @ out

    def _flatten_batched(self, parts: Sequence[Tensor | None], T: int) -> Tensor:
        ref = self.shared[0]
        cols = [
            torch.zeros(T, n, dtype=ref.dtype, device=ref.device) if g is None else g.reshape(T, -1)
            for g, n in zip(parts, self.sizes, strict=True)
        ]
        return torch.cat(cols, dim=1)

    # -- applying ------------------------------------------------------------------------------

    def apply(self, ctx: StepContext, update: Tensor, others: Sequence[nn.Parameter]) -> None:
        """Write the aggregated update, the heads' (and learnable weights') gradients, then the
        regularisers' gradient, into ``.grad`` (which the caller zeroed)."""
        if ctx.grad_space == "params":
            if update.shape != (self.num_params,):
                raise MtoError(f"update has shape {tuple(update.shape)}, expected ({self.num_params},)")
            for p, chunk in zip(self.shared, torch.split(self._scaled(update.detach()), self.sizes), strict=True):
                p.grad = chunk.view_as(p).to(p.dtype).clone()
        else:
            z = ctx.z
            assert z is not None
            if self.comm is not None:
                update = self.comm.local_update(update)
            if update.numel() != z.numel():
                raise MtoError(f"update has {update.numel()} entries, the representation {z.numel()}")
            torch.autograd.backward(z, self._scaled(update.detach()).view_as(z).to(z.dtype), retain_graph=True)

        hw = ctx.head_weights.detach() if ctx.head_weights is not None else 1.0
        heads_objective = self._scaled((hw * ctx.weights * ctx.losses).sum())
        trainable = [p for p in others if p.requires_grad]
        if trainable and heads_objective.requires_grad:
            torch.autograd.backward(heads_objective, inputs=trainable, retain_graph=bool(ctx.extra_losses))
        if ctx.extra_losses:
            torch.autograd.backward(self._scaled(sum(ctx.extra_losses.values())))  # type: ignore[arg-type]


def _one_traversal_applies(ctx: StepContext) -> bool:
    """Whether ``ctx.losses`` reach ``Z`` only through ``ctx.raw_losses`` and the heads' aliases."""
    heads = ctx.grad_cache.head_inputs
    if heads is None or ctx.raw_losses is None or not ctx.losses.requires_grad:
        return False
    if ctx.losses is ctx.raw_losses:
        return True
    # Walk the (few-node) transform graph back to the raw losses; reaching Z, or a head's alias of
    # it, another way means the transform read the predictions or Z itself.
    stop = ctx.raw_losses.grad_fn
    avoid = {a.grad_fn for a in heads}
    if ctx.z is not None:
        avoid.add(ctx.z.grad_fn)
    seen: set[object] = set()
    todo = [ctx.losses.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn is stop or fn in seen:
            continue
        if fn in avoid:
            return False
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return True


def _jacobian(out: Tensor, base: Tensor, *, differentiable: bool) -> Tensor:
    """``∂out/∂base`` (``T×T``) of a loss transform: one vmapped backward of the identity's rows
    from :data:`BATCHED_MIN_TASKS` tasks on, one call per row below."""
    T = out.shape[0]
    if T >= BATCHED_MIN_TASKS:
        eye = torch.eye(T, dtype=out.dtype, device=out.device)
        (jac,) = torch.autograd.grad(out, base, grad_outputs=eye, retain_graph=True, create_graph=differentiable,
                                     allow_unused=True, is_grads_batched=True)
        return torch.zeros(T, *base.shape, dtype=base.dtype, device=base.device) if jac is None else jac
    rows = []
    for t in range(out.shape[0]):
        (g,) = torch.autograd.grad(out[t], base, retain_graph=True, create_graph=differentiable, allow_unused=True)
        rows.append(torch.zeros_like(base) if g is None else g)
    return torch.stack(rows)
