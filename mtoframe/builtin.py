"""Methods built into the core: EW."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .hookspecs import hookimpl
from .method import Method, Role

if TYPE_CHECKING:  # the registry imports this module when it loads the built-in methods
    from .registry import Registry


class EW(Method):
    """Equal weighting: the objective is ``Σ_t L_t`` (the sum, as LibMTL; not the mean).

    The empty stack means EW; naming it is only useful to be explicit. Heads receive their task's
    loss gradient. No options, no state, one backward per step.
    """

    name = "ew"
    summary = "Equal weighting: sum of the task losses (one backward)."
    paper = "baseline"
    defaults_reproduce = "LibMTL (the sum of the losses, not the mean)"
    roles = Role.NONE


@hookimpl
def mtoframe_register(registry: Registry) -> None:
    registry.add(EW)
