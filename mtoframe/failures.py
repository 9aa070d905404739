"""One failure counter and one warning class for every method whose solver can fail.

A method that falls back (keeps its previous weights, uses the last iterate of a solver that hit
its cap) records the failure with a :class:`FailureCounter`: the first one issues a
:class:`SolverWarning`, every one is counted and logged as ``solver/failures/<method>``. A user
who filters ``mtoframe.SolverWarning`` therefore sees (or silences) the failures of every method,
core or plugin, and nothing is ever silently replaced.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["FailureCounter", "SolverWarning"]


class SolverWarning(UserWarning):
    """A solver failed and a method used its documented fallback."""


class FailureCounter:
    """Counts a method instance's solver failures, warns on the first one and logs the count
    as ``solver/failures/<method>`` on every logging step.

    :param method: the method's registry name.
    :param fallback: what the method does instead, in a phrase (``"keeping the previous
        weights"``), for the warning.
    """

    def __init__(self, method: str, fallback: str) -> None:
        self.method = method
        self.fallback = fallback
        self.count = 0
        self._warned = False

    def record(self, reason: str) -> None:
        """Count one failure; warn if it is this instance's first."""
        self.count += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.method}: solver failed ({reason}); {self.fallback}. Further failures are counted "
                f"in solver/failures/{self.method} without another warning.",
                SolverWarning,
                stacklevel=3,
            )

    def reset(self) -> None:
        """Forget the count; the next failure warns again."""
        self.count = 0
        self._warned = False

    def log(self, ctx: StepContext) -> None:
        ctx.log(f"solver/failures/{self.method}", float(self.count))
