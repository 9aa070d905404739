"""GradNorm (Chen et al., *GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks*, ICML 2018, https://arxiv.org/abs/1711.02257).

Task weights ``w`` are learned so that the gradient norm of each weighted loss at a shared layer
``W``, ``G_t = ‖∇_W (w_t L_t)‖``, tracks ``Ḡ · r_t^α`` where ``Ḡ = mean_t G_t``,
``r_t = L̃_t / mean L̃``, ``L̃_t = L_t / L_t(0)`` (``α = 1.5``). The weights' loss is
``L_grad = Σ_t |G_t − Ḡ r_t^α|`` with the target held constant; it trains only ``w`` (a
regulariser ``reg/gradnorm`` whose gradient reaches nothing else), while the model trains on
``Σ_t w_t L_t`` with ``w`` detached.

No second-order graph is needed: ``G_t = |w_t| · ‖∇_W L_t‖`` exactly, so the gradient of
``L_grad`` with respect to ``w`` is the one the reference obtains through its graph of
``w_t·∇L_t``; ``‖∇_W L_t‖`` is one ``autograd.grad`` per task (``retain_graph``, no
``create_graph``). Cost: T extra partial backward passes to ``W``.

Options and which reference they reproduce:

* ``layer = "last"`` (paper): the last shared parameter with at least two dimensions (the last
  encoder layer's weight); ``"all"`` (LibMTL): all shared parameters; or the name of an encoder
  parameter as in ``model.encoder.named_parameters()`` (e.g. ``"2.weight"``).
* ``initial_losses = "first_epoch"`` (LibMTL): epoch 0 trains with ``w = 1`` and ``L_t(0)`` is the
  task's mean loss over epoch 0 (``on_epoch_end``); balancing starts at epoch 1.
  ``"first_step"`` (paper): ``L_t(0)`` is the loss of the first step the task is present in and
  balancing starts at once.
* ``parametrisation = "softmax"`` (LibMTL): ``w = T · softmax(ξ)``, ``ξ`` learnable (init 0).
  ``"renormalise"`` (paper): ``w`` learnable (init 1), renormalised to ``Σ w = T`` after every
  step.
* ``lr``: learning rate of the weights' group (default the optimiser's; the paper and LibMTL use
  the model's optimiser).

``T`` is the number of tasks of the trainer; partial labels use the present tasks' entries.
Heads receive their task's gradient weighted by (detached) ``w_t``. GradNorm needs a trainer (it
reads the model in ``on_train_start``).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn

from mtoframe import hookimpl
from mtoframe.errors import MtoError, OptionError
from mtoframe.options import in_range, one_of

from ._common import Learnable, optional_lr
from ._history import epoch_losses


def _layer(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise OptionError(f"option 'layer' of gradnorm must be 'last', 'all' or an encoder parameter name, got {value!r}")


@attrs.frozen(kw_only=True)
class GradNormOptions:
    #: strength of the restoring force towards a common training rate.
    alpha: float = attrs.field(default=1.5, validator=in_range(0.0))
    #: shared parameters whose gradient norms are balanced: "last", "all" or a parameter name.
    layer: str = attrs.field(default="last", validator=_layer)
    #: where L(0) comes from: "first_epoch" (LibMTL) or "first_step" (paper).
    initial_losses: str = attrs.field(default="first_epoch", validator=one_of(("first_epoch", "first_step")))
    #: "softmax" (LibMTL: w = T·softmax(ξ)) or "renormalise" (paper: w, Σw = T after each step).
    parametrisation: str = attrs.field(default="softmax", validator=one_of(("softmax", "renormalise")))
    #: learning rate of the weights (None: the optimiser's).
    lr: float | None = attrs.field(default=None, validator=optional_lr())


def select_layer(encoder: nn.Module, layer: str) -> list[nn.Parameter]:
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    if not named:
        raise MtoError("gradnorm needs trainable shared (encoder) parameters")
    if layer == "all":
        return [p for _, p in named]
    if layer == "last":
        matrices = [p for _, p in named if p.dim() >= 2]
        return [matrices[-1] if matrices else named[-1][1]]
    for n, p in named:
        if n == layer:
            return [p]
    raise OptionError(f"option 'layer' of gradnorm: no trainable encoder parameter {layer!r}; "
                      f"choose 'last', 'all' or one of {[n for n, _ in named]}")


class GradNorm(Learnable):
    """GradNorm; see the module docstring."""

    name = "gradnorm"
    summary = "GradNorm: learn task weights so weighted gradient norms at a shared layer track r_t^α."
    paper = "Chen et al., GradNorm, ICML 2018, arXiv 1711.02257"
    defaults_reproduce = "α = 1.5 and last shared layer (paper); initial losses from the first epoch, softmax weights (LibMTL)"
    Options = GradNormOptions
    heads_receive = "their task's gradient weighted by w_t (detached)"

    def __init__(self, options: Any = None, /, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.init_value = 0.0 if self.options.parametrisation == "softmax" else 1.0

    def reset(self) -> None:
        super().reset()
        self.initial: Tensor | None = None  # L(0) over all tasks, NaN until known
        self._layer: list[nn.Parameter] | None = None

    @hookimpl
    def on_train_start(self, trainer: Any) -> None:
        self._layer = select_layer(trainer.model.encoder, self.options.layer)
        super().on_train_start(trainer)

    def task_weights(self) -> Tensor:
        """``w`` over all tasks (differentiable in the parameter)."""
        assert self.param is not None
        if self.options.parametrisation == "softmax":
            return len(self.param) * torch.softmax(self.param, dim=0)
        return self.param

    @hookimpl
    def on_epoch_end(self, trainer: Any, epoch: int, stats: Any) -> None:
        if self.options.initial_losses == "first_epoch" and epoch == 0:
            self.initial = epoch_losses(stats, trainer.task_names)

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        if self._layer is None:
            raise MtoError("gradnorm needs a trainer: it reads the shared layer in on_train_start")
        losses = ctx.losses
        self.values(ctx)
        ids = ctx.task_ids
        if self.options.initial_losses == "first_step":
            if self.initial is None:
                self.initial = torch.full((len(ctx.all_tasks),), float("nan"), dtype=torch.float64)
            new = torch.isnan(self.initial[ids.cpu()])
            if new.any():
                self.initial[ids.cpu()[new]] = losses.detach().double().cpu()[new]
        if self.initial is None:
            return  # LibMTL: equal weights until the first epoch's mean losses are known
        initial = self.initial.to(device=losses.device, dtype=losses.dtype)[ids]
        w = self.task_weights()[ids].to(losses.dtype)
        norms = torch.stack([self._grad_norm(losses[t]) for t in range(ctx.num_tasks)])
        g = w.abs() * norms
        rel = losses.detach() / initial
        target = (g.mean() * (rel / rel.mean()) ** self.options.alpha).detach()
        ctx.add_loss("gradnorm", (g - target).abs().sum())
        ctx.weights = ctx.weights * w.detach()

    def _grad_norm(self, loss: Tensor) -> Tensor:
        assert self._layer is not None
        grads = torch.autograd.grad(loss, self._layer, retain_graph=True, allow_unused=True)
        parts = [g.pow(2).sum() for g in grads if g is not None]
        return torch.stack(parts).sum().sqrt() if parts else loss.new_zeros(())

    @hookimpl
    def on_after_step(self, ctx: Any) -> None:
        if self.options.parametrisation == "renormalise" and self.param is not None:
            with torch.no_grad():
                self.param.mul_(len(self.param) / self.param.sum())

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if self.initial is not None:
            out["initial"] = self.initial.clone()
        return out

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "initial"})
        self.initial = state["initial"].clone() if "initial" in state else None
