"""What the ``nonfinite="raise"`` error names: the tasks, regularisers, update or parameters
whose values were NaN/inf. Only runs once a step has already failed, so it may read freely."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import warnings

import torch

if TYPE_CHECKING:
    from .context import StepContext


def nonfinite_detail(trainer: Any, ctx: StepContext, bad: list[bool], what: str) -> str:
    """``"<what> at step N: <culprits>"`` for the flags ``bad`` of :meth:`Trainer._nonfinite`
    (losses, regularisers, then gradients; or the update, then gradients)."""
    where = f"at step {ctx.step}"
    if what == "loss" and bad[0]:
        culprits = [t for t, ok in zip(ctx.tasks, torch.isfinite(ctx.losses.detach()).tolist()) if not ok]
        return f"loss {where}: task(s) {culprits}"
    extra = [n for n, v in ctx.extra_losses.items() if not bool(torch.isfinite(v.detach()).all())]
    if what == "loss" and extra:
        return f"loss {where}: regulariser(s) {extra}"
    if what == "update" and bad[0]:
        return f"update {where}: the update from {[m.name for m in trainer.stack if m.grad_space]}"
    return f"gradient {where} (the losses are finite): parameter(s) {_bad_parameters(trainer)}"


def _bad_parameters(trainer: Any) -> str:
    named = dict(trainer.model.named_parameters())
    named.update({f"method parameter {i}": p for i, p in enumerate(trainer._method_params)})
    bad = [n for n, p in named.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    return shown or "(none of the model's: an optimiser group outside the model)"


def warn_first_skip(trainer: Any, ctx: StepContext, bad: list[bool], what: str) -> None:
    """Under ``nonfinite="skip"`` the first skipped step says why (later ones are only counted):
    one task's NaN (say, a batch whose labels are all ``ignore_index``) drops every task's step."""
    warnings.warn(f"skipped step {ctx.step} (nonfinite='skip'): non-finite {nonfinite_detail(trainer, ctx, bad, what)}; "
                  "the whole step is dropped, every task's update with it. A task with nothing to learn from in a "
                  "batch (e.g. all labels ignore_index) should get no target there (None) instead. Later skips are "
                  "counted in trainer.counters['skipped_steps'] and logged as steps/skipped", RuntimeWarning,
                  stacklevel=4)
