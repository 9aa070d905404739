"""What the ``nonfinite="raise"`` error names: the tasks, regularisers, update, gradient rows or
parameters whose values were NaN/inf. Only runs once a step has already failed, so it may read
freely."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import warnings

import torch

from .errors import MtoError, NonFiniteLossError

if TYPE_CHECKING:
    from .context import StepContext


def nonfinite_detail(trainer: Any, ctx: StepContext, bad: list[bool], what: str) -> str:
    """``"<what> at step N: <culprits>"`` for the flags ``bad`` of :meth:`Trainer._nonfinite`
    (losses, regularisers, then gradients; or the update, then gradients), or, with
    ``what="grads"``, for the gradient matrix a method refused (:func:`refused_nonfinite_grads`)."""
    where = f"at step {ctx.step}"
    if what == "loss" and bad[0]:
        culprits = [t for t, ok in zip(ctx.tasks, torch.isfinite(ctx.losses.detach()).tolist()) if not ok]
        return f"loss {where}: task(s) {culprits}"
    extra = [n for n, v in ctx.extra_losses.items() if not bool(torch.isfinite(v.detach()).all())]
    if what == "loss" and extra:
        return f"loss {where}: regulariser(s) {extra}"
    if what == "update" and bad[0]:
        return f"update {where}: the update from {_gradient_methods(trainer)}"
    if what == "grads":
        rows = torch.isfinite(ctx.grads.detach()).all(dim=1).tolist()
        culprits = [t for t, ok in zip(ctx.tasks, rows) if not ok]
        return f"gradient {where} (the losses are finite): the gradient matrix's row(s) of task(s) {culprits}"
    return f"gradient {where} (the losses are finite): parameter(s) {_bad_parameters(trainer)}"


def _gradient_methods(trainer: Any) -> list[str]:
    return [m.name for m in trainer.stack if m.grad_space]


def _bad_parameters(trainer: Any) -> str:
    named = dict(trainer.model.named_parameters())
    named.update({f"method parameter {i}": p for i, p in enumerate(trainer._method_params)})
    bad = [n for n, p in named.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    return shown or "(none of the model's: an optimiser group outside the model)"


def refused_nonfinite_grads(trainer: Any, ctx: StepContext, error: MtoError) -> bool:
    """A method's ``on_shared_grads`` raised ``error``. If the step's gradient matrix is not
    finite, a solver refusing it (MGDA's, UPGrad's QP, an SVD) is that matrix's fault, not the
    method's: the trainer's ``nonfinite`` policy applies as for a non-finite update. Returns
    True when the step is to be skipped (counted and, the first time, warned about by the
    caller's path); raises :class:`NonFiniteLossError` (from ``error``) under ``"raise"``;
    returns False when the gradients are finite and ``error`` stands.

    The finiteness is read here only, after a failure: the normal path keeps its host reads.
    Under ``torch.distributed`` every rank holds the same union matrix, so every rank decides
    alike with no collective (a rank-local one here could pair with another rank's next one)."""
    if not ctx.has_grads or bool(ctx.grads_finite()):  # a method that never read G did not refuse it
        return False
    detail = (f"{nonfinite_detail(trainer, ctx, [], 'grads')}, on which the stack's gradient method(s) "
              f"{_gradient_methods(trainer)} raised {type(error).__name__}: {error}")
    if trainer.nonfinite == "raise":
        raise NonFiniteLossError(f"non-finite {detail}; nonfinite='skip' skips such steps instead") from error
    if not trainer.counters["skipped_steps"]:
        _warn(ctx, detail, loss_caused=False, stacklevel=4)  # the caller of Trainer.step
    return True


def warn_first_skip(trainer: Any, ctx: StepContext, bad: list[bool], what: str) -> None:
    """Under ``nonfinite="skip"`` the first skipped step says why (later ones are only counted)."""
    _warn(ctx, nonfinite_detail(trainer, ctx, bad, what), loss_caused=what == "loss" and bool(bad[0]), stacklevel=5)


def _warn(ctx: StepContext, detail: str, *, loss_caused: bool, stacklevel: int) -> None:
    # One task's NaN loss (say, a batch whose labels are all ignore_index) drops every task's
    # step; only then is a missing target the cure worth suggesting.
    hint = (" A task with nothing to learn from in a batch (e.g. all labels ignore_index) should get no target "
            "there (None) instead." if loss_caused else "")
    warnings.warn(f"skipped step {ctx.step} (nonfinite='skip'): non-finite {detail}; the whole step is dropped, "
                  f"every task's update with it.{hint} Later skips are counted in trainer.counters['skipped_steps'] "
                  "and logged as steps/skipped", RuntimeWarning, stacklevel=stacklevel)
