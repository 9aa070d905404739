"""One step's gradient cache: what the gradient engine computed, and the inputs it computes from.

The engine fills it (:class:`mtoframe.gradients.GradientEngine`) and :class:`StepContext` reads
it through its public properties (``grads``, ``gram()``, ``rep_grads()``), dropping entries when
what they derive from changes (new losses or weights: everything; new ``grads``: their Gram
matrix and finiteness flag). Nothing else writes it except the Stack, which records the inputs
below when it builds the step.
"""

from __future__ import annotations

from torch import Tensor


class GradientCache:
    """Per-step gradient inputs (set by the Stack) and results (set by the engine)."""

    def __init__(self) -> None:
        #: per-task loss scalars before stacking (``ctx.raw_losses`` stacks them): the gradient
        #: of one of them runs only its own head's backward
        self.task_losses: tuple[Tensor, ...] | None = None
        #: per-head aliases of ``z``, in task order (only with a gradient engine). Per-task
        #: gradients are taken at these, so a tensor hook on ``z`` itself sees only the single
        #: backward of the update, and hooks on these see the per-task ones.
        self.head_inputs: tuple[Tensor, ...] | None = None
        #: the current ``T x D`` gradient matrix, its Gram matrix and finiteness flag
        self.grads: Tensor | None = None
        self.gram: Tensor | None = None
        self.grads_finite: Tensor | None = None
        #: the gradient matrix as first computed, before any transform (for logging)
        self.raw_grads: Tensor | None = None
        #: ``∂L_t/∂Z`` of the current losses, and whether it was built with ``create_graph``
        self.rep_grads: Tensor | None = None
        self.rep_grads_differentiable = False

    def drop_grads(self) -> None:
        """The matrix was replaced (or its losses or weights changed): derived values are stale."""
        self.grads = self.gram = self.grads_finite = None

    def drop_all(self) -> None:
        """The losses changed: every gradient of them is stale."""
        self.drop_grads()
        self.rep_grads = None
