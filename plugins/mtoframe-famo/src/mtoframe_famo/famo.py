"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liu, Stone, Liu, NeurIPS 2023,
https://arxiv.org/abs/2306.03792; official code https://github.com/Cranial-XIX/FAMO).

Maths (``../shared/METHODS.md``). Logits ``ξ`` (zeros), ``z = softmax(ξ)``,
``D_t = L_t − min_loss_t + 1e-8``, ``c = 1 / Σ_t (z_t / D_t)`` (detached). The objective is

    Σ_t z_t · c · log D_t

so the step decreases every log-loss at a rate that FAMO balances. After ``optimizer.step()``
the same batch is forwarded again without gradient and ``ξ`` takes one Adam step (lr ``w_lr``,
weight decay ``gamma``) along

    (diag z − z zᵀ) δ,    δ_t = log D_t(before) − log D_t(after),

which is the vector–Jacobian product of ``softmax`` with ``δ``: a task whose log-loss fell more
than the z-weighted average gets its logit lowered.

In the pipeline ``on_task_losses`` replaces ``ctx.losses`` by ``log D`` and multiplies
``ctx.weights`` by ``z · c`` (detached), so the gradient is exactly the reference's
``Σ z log D / Σ(z/D)``; per-task gradient rows seen by a later gradient method are
``z_t c ∇L_t / D_t``. Heads receive their task's gradient of ``z_t c log D_t``.

Options and which reference they reproduce:

* ``w_lr = 0.025`` and ``gamma = 1e-3`` — the official code's NYUv2 setting (``gamma`` is
  ``1e-2`` for Cityscapes, ``0`` for the two-task toy).
* ``min_losses = 0.0`` — a float for every task or one value per task (official
  ``min_losses`` argument, zeros by default).
* ``extra_forward_mode = "train"`` — the official code recomputes the losses with the model in
  training mode, so every BatchNorm layer updates its running statistics a second time on the
  same batch each step (the running averages then move twice as fast towards the batch
  statistics) and dropout draws a second mask. ``"eval"`` runs that forward in eval mode:
  BatchNorm uses and keeps its running statistics and dropout is off, so ``δ`` measures the
  change of the deterministic model; this is not what the paper ran.
* No gradient clipping. The reference's ``backward`` calls ``clip_grad_norm_(shared_parameters,
  1.0)`` *before* ``loss.backward()``: it clips whatever the shared parameters' ``.grad`` held
  before this step's backward (nothing after the usual ``zero_grad``), never this step's
  gradient, so leaving it out changes no update. (The logits ``ξ`` are not clipped either.)

Partial labels: only present tasks enter ``softmax`` (over their logits) and the logit update;
absent tasks' logits receive zero gradient (Adam's weight decay and momentum still move them,
as they would the reference's full ``ξ``). A skipped (non-finite) step leaves ``ξ`` untouched.

Stacking: FAMO is a loss-weighting method. It composes with gradient *transforms* (PCGrad,
GradVac, GradDrop: they project FAMO-weighted rows) and with aggregators that depend on row
scales (CAGrad, MGDA without normalisation, UPGrad). It is rejected with another loss-level
method (two schemes would fight over the same weights and their product is no published method)
and with aggregators that are invariant to rescaling each task's gradient (Nash-MTL, IMTL-G) or
that impose their own weighting (DB-MTL, ExcessMTL): FAMO's weights would have no effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from mtoframe import LossWeighting, hookimpl
from mtoframe.errors import MtoError, OptionError
from mtoframe.options import in_range, one_of

def softmax_vjp(logits: Tensor, delta: Tensor) -> Tensor:
    """``(diag z − z zᵀ) δ`` with ``z = softmax(logits)``: the gradient FAMO applies to ``ξ``."""
    z = torch.softmax(logits, dim=-1)
    return z * delta - z * (z @ delta)


_INF = float("inf")  # NaN fails the chained comparison too


def _min_losses(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    values = value if isinstance(value, tuple) else (value,)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not -_INF < v < _INF for v in values):
        raise OptionError(
            f"option 'min_losses' of famo must be a finite number or a tuple of finite numbers (one per task), "
            f"got {value!r}"
        )


def _as_min_losses(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class FAMOOptions:
    #: Adam learning rate of the logits (official default).
    w_lr: float = attrs.field(default=0.025, validator=in_range(0.0, lo_open=True))
    #: weight decay of the logits: 1e-3 (NYUv2), 1e-2 (Cityscapes), 0 (toy).
    gamma: float = attrs.field(default=1e-3, validator=in_range(0.0))
    #: lower bound of each loss (a number for all tasks or one per task).
    min_losses: float | tuple[float, ...] = attrs.field(default=0.0, converter=_as_min_losses, validator=_min_losses)
    #: mode of the post-step forward: "train" (reference) or "eval" (BatchNorm updated once).
    extra_forward_mode: str = attrs.field(default="train", validator=one_of(("train", "eval")))


class FAMO(LossWeighting):
    """FAMO loss weighting; the maths, options and stacking rules are in the module docstring."""

    name = "famo"
    summary = "FAMO: balances the rate at which log-losses fall; EW's cost plus one no-grad forward."
    paper = "Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023, arXiv 2306.03792"
    defaults_reproduce = "official code, NYUv2 setting (w_lr 0.025, γ 1e-3); extra forward in train mode as the reference"
    Options = FAMOOptions
    heads_receive = "their task's gradient of z_t·c·log D_t (FAMO-weighted, as the reference)"

    @property
    def extra_forward(self) -> bool:
        return True

    def reset(self) -> None:
        self.logits: Tensor | None = None
        self._opt: torch.optim.Adam | None = None
        self._before: Tensor | None = None  # log D of the step's present tasks, before the step
        self._ids: Tensor | None = None

    # -- state -------------------------------------------------------------------------------

    def _ensure(self, num_tasks: int, ref: Tensor) -> None:
        if self.logits is not None:
            if self.logits.numel() != num_tasks:
                raise MtoError(f"famo holds logits for {self.logits.numel()} tasks but the trainer has {num_tasks}")
            return
        self.logits = torch.zeros(num_tasks, dtype=ref.dtype, device=ref.device, requires_grad=True)
        self._opt = torch.optim.Adam([self.logits], lr=self.options.w_lr, weight_decay=self.options.gamma)

    def _min(self, ids: Tensor, ref: Tensor) -> Tensor:
        m = self.options.min_losses
        assert self.logits is not None
        if isinstance(m, tuple):
            if len(m) != self.logits.numel():
                raise OptionError(f"option 'min_losses' of famo has {len(m)} values for {self.logits.numel()} tasks")
            return torch.tensor(m, dtype=ref.dtype, device=ref.device)[ids]
        return torch.full((len(ids),), float(m), dtype=ref.dtype, device=ref.device)

    def weights(self) -> Tensor:
        """``softmax(ξ)`` over all tasks (for inspection and logging)."""
        if self.logits is None:
            raise MtoError("famo has no logits yet: it builds them on the first step")
        return torch.softmax(self.logits.detach(), dim=-1)

    def state_dict(self) -> dict[str, Any]:
        if self.logits is None:
            return {}
        assert self._opt is not None
        out: dict[str, Any] = {"logits": self.logits.detach().clone()}
        st = self._opt.state.get(self.logits)
        if st:
            out.update({f"adam_{k}": v.detach().clone() for k, v in st.items()})
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        if not state:
            return
        logits = state["logits"]
        self._ensure(logits.numel(), logits)
        assert self.logits is not None and self._opt is not None
        with torch.no_grad():
            self.logits.copy_(logits)
        adam = {k[len("adam_"):]: v.clone() for k, v in state.items() if k.startswith("adam_")}
        if adam:
            self._opt.state[self.logits] = adam

    # -- hooks -------------------------------------------------------------------------------

    @hookimpl
    def on_train_start(self, trainer: Any) -> None:
        self._ensure(len(trainer.tasks), next(trainer.model.parameters()))

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        losses = ctx.losses
        self._ensure(len(ctx.all_tasks), losses)
        assert self.logits is not None
        ids = ctx.task_ids
        z = torch.softmax(self.logits.detach()[ids], dim=-1).to(losses.dtype)
        d = losses - self._min(ids, losses) + 1e-8
        inv_c = (z / d.detach()).sum()
        ctx.losses = torch.log(d)
        ctx.weights = ctx.weights * (z / inv_c)
        self._before = ctx.losses.detach()
        self._ids = ids
        if ctx.logging:
            for t, w in zip(ctx.tasks, z):
                ctx.log(f"famo/z/{t}", w)

    @hookimpl
    def on_after_step(self, ctx: Any) -> None:
        before, ids = self._before, self._ids
        self._before = self._ids = None
        if ctx.skipped or before is None or ids is None:
            return
        assert self.logits is not None and self._opt is not None
        after = ctx.recompute_losses(train_mode=self.options.extra_forward_mode == "train")
        delta = before - torch.log(after.to(before.dtype) - self._min(ids, before) + 1e-8)
        grad = torch.zeros_like(self.logits)
        grad[ids] = softmax_vjp(self.logits.detach()[ids], delta.to(self.logits.dtype))
        self.logits.grad = grad
        self._opt.step()
        self.logits.grad = None
