"""Train/eval mode switches that leave every submodule's own mode as the user set it.

``model.train(flag)`` sets the flag on every submodule, so restoring a mode with it undoes a
user's deliberate ``module.eval()`` (batch-norm statistics frozen for fine-tuning, a dropout
switched off): the next training step would silently update the frozen statistics. Lightning
restores each module's own flag after validation for the same reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def ensure_training(model: nn.Module) -> None:
    """Training mode for a step: a model left in eval mode (root flag off) is switched to train;
    one already training keeps its submodules' own modes."""
    if not model.training:
        model.train()


@contextlib.contextmanager
def mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Training mode as a step has it (:func:`ensure_training`) or ``model.eval()`` inside, then
    every module's own flag restored as it was."""
    saved = [(m, m.training) for m in model.modules()]
    if train:
        ensure_training(model)
    else:
        model.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag
