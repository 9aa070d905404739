"""What the loss-weighting methods of this distribution share: learnable per-task parameters in
their own optimiser group (the stacking rule is core's :class:`mtoframe.LossWeighting`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from mtoframe import LossWeighting, hookimpl
from mtoframe.errors import MtoError
from mtoframe.options import in_range


def optional_lr() -> Any:
    """``None`` (the optimiser's learning rate) or a positive number."""
    return attrs.validators.optional(in_range(0.0, lo_open=True))


class Learnable(LossWeighting):
    """A loss-level method with one learnable value per task (UW, IMTL-L, GradNorm).

    Inside a trainer the parameter joins the optimiser in its own group without weight decay
    (``trainer.add_method_parameters``, learning rate ``options.lr`` or the optimiser's); on a
    bare context it is created lazily and trains only if the caller optimises it. Its values are
    part of ``state_dict`` and ``load_state_dict`` copies in place, so the optimiser keeps
    pointing at the same tensor.
    """

    #: initial value of every entry
    init_value: float = 0.0

    def __init__(self, options: Any = None, /, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.param: nn.Parameter | None = None

    def reset(self) -> None:
        self.param = None

    def _create(self, num_tasks: int, ref: Tensor) -> nn.Parameter:
        if self.param is None:
            self.param = nn.Parameter(torch.full((num_tasks,), self.init_value, dtype=ref.dtype, device=ref.device))
        elif self.param.numel() != num_tasks:
            raise MtoError(f"{self.name} holds {self.param.numel()} per-task values but there are {num_tasks} tasks")
        return self.param

    @hookimpl
    def on_train_start(self, trainer: Any) -> None:
        param = self._create(len(trainer.tasks), next(trainer.model.parameters()))
        trainer.add_method_parameters(self, [param], lr=self.options.lr)

    def values(self, ctx: Any) -> Tensor:
        """The parameter over all tasks (created on first use in a bare context)."""
        return self._create(len(ctx.all_tasks), ctx.losses)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.param is None else {"param": self.param.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            self.reset()
            return
        value = state["param"]
        param = self._create(value.numel(), value)
        with torch.no_grad():
            param.copy_(value)
