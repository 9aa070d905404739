"""The :class:`Method` base class every MTO method derives from.

A method is a configured plugin object: its options are an ``attrs`` class validated at
construction; it declares its roles and what it needs so that the trainer computes each input
once, picks the cheapest path, and rejects stacks that cannot work before training starts; it
implements the hooks of :mod:`mtoframe.hookspecs` it needs, decorated with
:data:`mtoframe.hookimpl`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import attrs

from .errors import OptionError, StackError
from .options import NoOptions

Space = Literal["params", "representation"]
SPACES: tuple[Space, ...] = ("params", "representation")


class Role(enum.Flag):
    """What a method does in the step pipeline (a method may have several)."""

    NONE = 0
    #: changes losses or loss weights in ``on_task_losses`` (FAMO, UW, DWA, log).
    LOSS = enum.auto()
    #: maps the ``T×D`` gradient matrix to another ``T×D`` matrix (PCGrad, GradVac).
    TRANSFORM = enum.auto()
    #: maps the ``T×D`` gradient matrix to the final ``D`` update; must be last (Nash-MTL, CAGrad).
    AGGREGATOR = enum.auto()
    #: adds named loss terms whose gradient is added after aggregation (Rep-MTL).
    REGULARISER = enum.auto()


GRADIENT_ROLES = Role.TRANSFORM | Role.AGGREGATOR


class Method:
    """Base class of MTO methods.

    Subclasses set the class attributes below and implement hooks::

        class Scaled(Method):
            name = "scaled"
            summary = "Multiply every loss by a constant."
            roles = Role.LOSS
            Options = ScaledOptions           # an attrs class with validators

            @hookimpl
            def on_task_losses(self, ctx):
                ctx.weights = ctx.weights * self.options.factor

    Construct with keyword options (``Scaled(factor=2.0)``) or an options instance.
    """

    #: registry name: lower case, no separators (``nashmtl``).
    name: ClassVar[str] = ""
    #: one-line description for ``mtoframe plugins``.
    summary: ClassVar[str] = ""
    #: paper reference (title, venue, link).
    paper: ClassVar[str] = ""
    #: ``attrs`` class holding the options.
    Options: ClassVar[type] = NoOptions
    #: what the method does in the pipeline.
    roles: ClassVar[Role] = Role.NONE
    #: which reference implementation (or paper) the default options reproduce, in a phrase.
    defaults_reproduce: ClassVar[str] = ""
    #: what task-specific (head) parameters receive, for the docs and ``mtoframe plugins``.
    heads_receive: ClassVar[str] = "their task's (weighted) loss gradient"
    #: for aggregators whose update does not depend on the scale of each task's row (or that set
    #: their own task weights): why, so that a loss weighting placed before them is rejected as
    #: meaningless (:func:`mtoframe.loss_weighting.check_loss_weighting_stack`).
    ignores_loss_weights: ClassVar[str] = ""
    #: whether the method calls :func:`mtoframe.scaling.check_deferred` on its Gram matrix before
    #: changing state, so that ``mtoframe.aggregate`` skips its own pass over the matrix
    #: (:class:`~mtoframe.GramWeighting` does)
    checks_own_scale: ClassVar[bool] = False
    #: loss-level methods that form a published hybrid with this aggregator (IMTL-L before IMTL-G
    #: is LibMTL's IMTL): accepted before it despite ``ignores_loss_weights``.
    hybrid_with: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any = None, /, **kwargs: Any) -> None:
        if options is not None and kwargs:
            raise OptionError(f"{self.name}: pass either an options object or keyword options, not both")
        if options is None:
            allowed = [a.name for a in attrs.fields(self.Options)]
            unknown = sorted(set(kwargs) - set(allowed))
            if unknown:
                raise OptionError(
                    f"unknown option(s) {', '.join(map(repr, unknown))} for method {self.name!r}; "
                    f"allowed: {', '.join(allowed) if allowed else '(none)'}"
                )
            options = self.Options(**kwargs)
        elif not isinstance(options, self.Options):
            raise OptionError(
                f"{self.name}: options must be a {self.Options.__qualname__}, got {type(options).__qualname__}"
            )
        self.options = options
        # every method starts from the state reset() defines, so subclasses need no __init__ for it
        self.reset()

    # -- declarations ------------------------------------------------------------------------

    @property
    def grad_space(self) -> Space | None:
        """Space of the gradient matrix the method reads in ``on_shared_grads`` (None: none).

        Defaults to ``"params"`` for gradient methods; methods with a ``space`` option override.
        """
        if self.roles & GRADIENT_ROLES:
            return getattr(self.options, "space", "params")
        return None

    @property
    def scale_degree(self) -> float | None:
        """``k`` with ``update(c·G) = c^k · update(G)`` for every ``c > 0``, or None when the
        update is not positively homogeneous in the gradient matrix (the default).

        Declared by methods whose maths has that property (1 for most aggregators and
        transforms, 0 for scale-invariant ones such as Nash-MTL); :func:`mtoframe.aggregate`
        uses it to run a matrix of extreme scale (1e30, 1e-30) at a safe one
        (:mod:`mtoframe.scaling`).
        """
        return None

    @property
    def rep_grads(self) -> Literal["none", "plain", "differentiable"]:
        """Whether the method reads representation gradients in ``on_task_losses``
        (``differentiable``: with ``create_graph=True``, as Rep-MTL)."""
        return "none"

    @property
    def extra_forward(self) -> bool:
        """Whether ``on_after_step`` recomputes the losses (FAMO)."""
        return False

    def check_stack(self, stack: Sequence[Method]) -> None:
        """Raise :class:`StackError` if this method cannot work in ``stack`` (which contains it).

        The generic rules (one aggregator, last; one gradient space) are checked by the trainer.
        """

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """All mutable state (tensors and plain containers only, so that checkpoints load with
        ``torch.load(..., weights_only=True)``), including generator states."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no state but was given keys {sorted(state)}")

    def reset(self) -> None:
        """Forget all state. Called at the end of :meth:`__init__` (after ``options`` is set) and
        when a trainer is built around an existing method object."""

    # -- display -------------------------------------------------------------------------------

    def __repr__(self) -> str:
        opts = ", ".join(f"{a.name}={getattr(self.options, a.name)!r}" for a in attrs.fields(type(self.options)))
        return f"{type(self).__name__}({opts})"


def check_generic_stack(stack: Sequence[Method]) -> None:
    """The stacking rule of DESIGN §3: at most one aggregator, after every gradient transform;
    all gradient methods in one space; no method twice."""
    names = [m.name for m in stack]
    for n in set(names):
        if names.count(n) > 1:
            raise StackError(f"method {n!r} appears {names.count(n)} times in the stack {names}; use it once")
    aggregators = [i for i, m in enumerate(stack) if m.roles & Role.AGGREGATOR]
    if len(aggregators) > 1:
        raise StackError(
            f"the stack {names} has {len(aggregators)} aggregators "
            f"({', '.join(names[i] for i in aggregators)}); at most one is allowed"
        )
    if aggregators:
        a = aggregators[0]
        later = [m.name for m in stack[a + 1 :] if m.roles & Role.TRANSFORM]
        if later:
            raise StackError(
                f"aggregator {names[a]!r} is followed by gradient transform(s) {later} in {names}: "
                "the aggregator must come last among gradient methods"
            )
    spaces = {m.name: m.grad_space for m in stack if m.grad_space is not None}
    if len(set(spaces.values())) > 1:
        raise StackError(
            f"gradient methods disagree on the gradient space: {spaces}; they share one T×D matrix, "
            "so all must use 'params' or all 'representation'"
        )
    for m in stack:
        m.check_stack(stack)
