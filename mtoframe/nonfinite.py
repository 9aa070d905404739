"""The non-finite guard of a step (policy ``raise`` or ``skip``) and what its error names: the
tasks, regularisers, update, gradient rows or parameters whose values were NaN/inf.

The guard reads its flags on the host once per check (as ``GradScaler.step`` does): the price of
never letting NaN reach the parameters. Describing a failure only runs once a step has already
failed, so it may read freely.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .errors import MtoError, NonFiniteLossError, OptionError

if TYPE_CHECKING:
    from .context import StepContext
    from .distributed import Communicator

NonFinitePolicy = Literal["raise", "skip"]
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TESTING_DIR = _PACKAGE_DIR + "testing" + os.sep  # the conformance suite calls as a user would


class NonFiniteGuard:
    """Checks a step's losses, update and gradients; raises or tells the caller to skip.

    :param policy: ``"raise"`` or ``"skip"``.
    :param gradient_methods: names of the stack's gradient methods (named in messages).
    :param named_parameters: ``(name, parameter)`` pairs searched for a culprit on failure.
    :param counters: the stack's counters; ``"skipped_steps"`` decides whether a skip still warns.
    """

    def __init__(self, policy: NonFinitePolicy, *, gradient_methods: Sequence[str],
                 named_parameters: Callable[[], Iterable[tuple[str, Tensor]]], counters: dict[str, int],
                 comm: Communicator | None = None) -> None:
        if policy not in ("raise", "skip"):
            raise OptionError(f"nonfinite must be 'raise' or 'skip', got {policy!r}")
        self.policy = policy
        self.gradient_methods = list(gradient_methods)
        self.named_parameters = named_parameters
        self.counters = counters
        self.comm = comm

    def check(self, ctx: StepContext, *values: Tensor, what: str, grads: Sequence[Tensor] = ()) -> bool:
        """True when the step is to be skipped; raises under ``"raise"``."""
        # One host read for all the values and gradients. The 2-norms are one fused kernel on CUDA
        # (and vectorised on CPU) but overflow from ~1e19: a flagged gradient is confirmed by the
        # exact max-abs norm.
        flags = [torch.isfinite(v.detach()).all() for v in values]
        if grads:
            flags.append(torch.isfinite(torch.stack(torch._foreach_norm(list(grads)))).all())
        bad: list[bool] = (~torch.stack(flags)).tolist()
        if grads and bad[-1]:
            bad[-1] = not bool(torch.isfinite(torch.stack(torch._foreach_norm(list(grads), float("inf")))).all())
        if self.comm is not None:  # every rank must take the same branch (collectives follow)
            bad = self.comm.any(bad, ctx.device)
        if not any(bad):
            return False
        detail = self.detail(ctx, bad, what)
        if self.policy == "raise":
            raise NonFiniteLossError(f"non-finite {detail}; nonfinite='skip' skips such steps instead")
        if not self.counters["skipped_steps"]:
            _warn(ctx, detail, loss_caused=what == "loss" and bool(bad[0]))
        return True

    def refused(self, ctx: StepContext, error: MtoError) -> bool:
        """A method's ``on_shared_grads`` raised ``error``. If the step's gradient matrix is not
        finite, a solver refusing it (MGDA's, UPGrad's QP, an SVD) is that matrix's fault, not
        the method's: the policy applies as for a non-finite update. True: skip the step; raises
        :class:`NonFiniteLossError` (from ``error``) under ``"raise"``; False: ``error`` stands.

        The finiteness is read here only, after a failure: the normal path keeps its host reads.
        Under ``torch.distributed`` every rank holds the same union matrix, so every rank decides
        alike with no collective (a rank-local one here could pair with another rank's next one)."""
        if not ctx.has_grads or bool(ctx.grads_finite()):  # a method that never read G did not refuse it
            return False
        detail = (f"{self.detail(ctx, [], 'grads')}, on which the stack's gradient method(s) "
                  f"{self.gradient_methods} raised {type(error).__name__}: {error}")
        if self.policy == "raise":
            raise NonFiniteLossError(f"non-finite {detail}; nonfinite='skip' skips such steps instead") from error
        if not self.counters["skipped_steps"]:
            _warn(ctx, detail, loss_caused=False)
        return True

    def detail(self, ctx: StepContext, bad: list[bool], what: str) -> str:
        """``"<what> at step N: <culprits>"`` for the flags ``bad`` of :meth:`check` (losses,
        regularisers, then gradients; or the update, then gradients), or, with ``what="grads"``,
        for the gradient matrix a method refused."""
        where = f"at step {ctx.step}"
        if what == "loss" and bad[0]:
            finite = torch.isfinite(ctx.losses.detach()).tolist()
            culprits = [t for t, ok in zip(ctx.tasks, finite, strict=True) if not ok]
            return f"loss {where}: task(s) {culprits}"
        extra = [n for n, v in ctx.extra_losses.items() if not bool(torch.isfinite(v.detach()).all())]
        if what == "loss" and extra:
            return f"loss {where}: regulariser(s) {extra}"
        if what == "update" and bad[0]:
            return f"update {where}: the update from {self.gradient_methods}"
        if what == "grads":
            rows = torch.isfinite(ctx.grads.detach()).all(dim=1).tolist()
            culprits = [t for t, ok in zip(ctx.tasks, rows, strict=True) if not ok]
            return f"gradient {where} (the losses are finite): the gradient matrix's row(s) of task(s) {culprits}"
        return f"gradient {where} (the losses are finite): parameter(s) {self._bad_parameters()}"

    def _bad_parameters(self) -> str:
        bad = [n for n, p in self.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        return shown or "(none of the model's: an optimiser group outside the model)"


def _warn(ctx: StepContext, detail: str, *, loss_caused: bool) -> None:
    # One task's NaN loss (say, a batch whose labels are all ignore_index) drops every task's
    # step; only then is a missing target the cure worth suggesting.
    hint = (" A task with nothing to learn from in a batch (e.g. all labels ignore_index) should get no target "
            "there (None) instead." if loss_caused else "")
    warnings.warn(f"skipped step {ctx.step} (nonfinite='skip'): non-finite {detail}; the whole step is dropped, "
                  f"every task's update with it.{hint} Later skips are counted in counters['skipped_steps'] "
                  "and logged as steps/skipped", RuntimeWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside this package (the caller of ``Trainer.step`` or
    ``Stack.backward``), however deep the call inside it."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR) and not \
            frame.f_code.co_filename.startswith(_TESTING_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
