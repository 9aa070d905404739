"""The base of loss-weighting methods (FAMO, UW, DWA, ...) and their stacking rule."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import StackError
from .method import Method, Role

__all__ = ["LossWeighting", "check_loss_weighting_stack"]


def check_loss_weighting_stack(method: Method, stack: Sequence[Method]) -> None:
    """Stacking rule for loss-weighting methods: they compose with gradient transforms and with
    aggregators that read the rows' scales; they are rejected next to another loss-level method
    (two weighting schemes on the same losses are no published method and fight each other) and
    before an aggregator that declares ``ignores_loss_weights`` (the weights would have no
    effect), unless that aggregator names ``method`` in its ``hybrid_with`` (a published hybrid
    such as IMTL-L + IMTL-G)."""
    names = [m.name for m in stack]
    for other in stack:
        if other is method:
            continue
        if other.roles & Role.LOSS:
            raise StackError(
                f"{method.name!r} cannot be stacked with the loss-level method {other.name!r} in {names}: "
                "two loss-weighting schemes would fight over the same task weights; use one"
            )
        if other.ignores_loss_weights and method.name not in other.hybrid_with:
            raise StackError(
                f"{method.name!r} before {other.name!r} in {names} is meaningless: "
                f"{other.ignores_loss_weights}, so {method.name!r}'s weights would not change its direction"
            )


class LossWeighting(Method):
    """Base of methods that change the task losses or their weights in ``on_task_losses``:
    :attr:`~mtoframe.Role.LOSS` and the stacking rule :func:`check_loss_weighting_stack`."""

    roles = Role.LOSS

    def check_stack(self, stack: Sequence[Method]) -> None:
        check_loss_weighting_stack(self, stack)
