"""Base class turning a TorchJD aggregator into an mtoframe aggregator method.

TorchJD (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232)
aggregates the ``T×D`` Jacobian of the task losses into one update vector. mtoframe's ``T×D``
gradient matrix (rows = gradients of the weighted task losses, in the chosen space) *is* that
Jacobian, so the adapter hands ``ctx.grads`` to the aggregator unchanged and sets its output as the
update: ``d = A(G)``, exactly TorchJD's ``aggregator(G)``.

Heads receive their task's unweighted gradient (``set_update`` without ``head_weights``): TorchJD
aggregates only the shared parameters' Jacobian.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from torch import Tensor

from mtoframe import Method, Role, StepContext, hookimpl

PAPER = "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, arXiv 2406.16232 (TorchJD)"


class TorchJDMethod(Method):
    """An mtoframe aggregator delegating to a TorchJD aggregator built from the options."""

    roles = Role.AGGREGATOR
    paper = PAPER
    defaults_reproduce = "TorchJD 0.18's own defaults, called through TorchJD"
    heads_receive = "their task's unweighted loss gradient"
    #: the ``torchjd.aggregation`` class this method wraps
    aggregator_name: ClassVar[str] = ""
    #: whether the aggregator draws from torch's global RNG (then ``options.seed`` seeds a private
    #: stream that the global RNG is swapped to around each call, so the draws are reproducible,
    #: checkpointed in ``state_dict`` and leave the user's global RNG untouched)
    uses_rng: ClassVar[bool] = False

    @property
    def scale_degree(self) -> float | None:
        # every exposed TorchJD aggregator is positively homogeneous of degree 1 in the Jacobian
        return 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # TorchJD aggregators are stateless modules configured once; building them per step would
        # only cost time
        self.aggregator = self.build()

    def reset(self) -> None:
        self._rng = torch.Generator().manual_seed(self.options.seed).get_state() if self.uses_rng else None

    def build(self) -> Any:
        """The configured ``torchjd.aggregation`` aggregator (subclasses pass their options)."""
        from torchjd import aggregation

        return getattr(aggregation, self.aggregator_name)()

    def aggregate(self, grads: Tensor) -> Tensor:
        if self._rng is None:
            return self.aggregator(grads)
        # TorchJD draws on the CPU generator only (it moves the Gram to the CPU first)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng)
            out = self.aggregator(grads)
            self._rng = torch.get_rng_state()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {} if self._rng is None else {"rng": self._rng.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self._rng is None:
            super().load_state_dict(state)
        elif state:  # a fresh instance's state: keep the seeded stream
            self._rng = state["rng"].clone()

    @hookimpl
    def on_shared_grads(self, ctx: StepContext) -> None:
        ctx.set_update(self.aggregate(ctx.grads))
