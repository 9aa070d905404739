"""Train a PyTorch Lightning module with an mtoframe stack: :class:`StackModule`.

``pip install 'mtoframe[lightning]'`` (the ``lightning`` package; ``import mtoframe`` never imports
it, only ``import mtoframe.lightning`` does). Subclass :class:`StackModule` instead of
``lightning.pytorch.LightningModule``, give it a :class:`~mtoframe.Stack`, and call
:meth:`StackModule.stack_step` in ``training_step`` where a Lightning module would call
``self.manual_backward(loss)`` and ``optimizer.step()``::

    class Net(StackModule):
        def __init__(self):
            backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
            super().__init__(mtoframe.Stack(["repmtl", "nashmtl"], tasks=["a", "b"], encoder=backbone))
            self.backbone, self.a, self.b = backbone, nn.Linear(32, 1), nn.Linear(32, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            z = self.backbone(x)
            losses = {"a": mse(self.a(z), y["a"]), "b": mse(self.b(z), y["b"])}
            self.stack_step(losses, features=z, shared_params=self.backbone.parameters())

        def configure_optimizers(self):
            return torch.optim.Adam([{"params": self.parameters()}, *self.stack.param_groups()], lr=1e-3)

Why a base class. The step needs the module (its optimiser, its precision, its checkpoint hooks) and
the stack's state must travel with the module's checkpoint, so the stack belongs to the module, as a
``torchmetrics.Metric`` does; a callback would keep the state somewhere a module loaded with
``load_from_checkpoint`` never sees, and a user who forgot it would resume with fresh method state.
TorchJD's Lightning recipe is the same shape written by hand (manual optimisation, ``mtl_backward``
in ``training_step``).

What the base class does (details, and what is supported and refused, in ``docs/lightning.md``):
``automatic_optimization = False`` (the stack computes the gradients); the stack starts in ``setup``,
after refusing strategies other than one device and precisions other than ``32-true``, ``64-true``
and ``bf16-mixed``; its learnable parameters follow the module's ``.to()``/``.double()``; its state
goes into every Lightning checkpoint under ``"mtoframe_stack"`` and comes back on resume; at each
training epoch's end ``stack.end_epoch`` gets the epoch's mean raw loss per task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor, nn

from .context import StepContext
from .epochloss import EpochLosses
from .errors import CheckpointError, OptionError
from .stack import Recompute, Stack

#: the checkpoint entry holding the stack's state
CHECKPOINT_KEY = "mtoframe_stack"
#: Lightning precision settings a stack trains under
SUPPORTED_PRECISION = ("32-true", "64-true", "bf16-mixed")

__all__ = ["CHECKPOINT_KEY", "SUPPORTED_PRECISION", "StackModule"]


class StackModule(pl.LightningModule):
    """A ``LightningModule`` trained by an mtoframe :class:`~mtoframe.Stack` (see the module doc).

    :param stack: the configured stack; pass ``encoder=`` to it when a method reads the model when
        it starts (UW, GradNorm, GradVac, FAMO), since the stack starts in ``setup``.
    """

    def __init__(self, stack: Stack, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(stack, Stack):
            raise OptionError(f"StackModule needs an mtoframe.Stack, got {type(stack).__name__}; "
                              "build one with mtoframe.Stack(methods, tasks=[...])")
        self.stack = stack
        self.automatic_optimization = False
        self._stack_started = False
        self._epoch_losses = EpochLosses(stack.tasks)

    # -- the step --------------------------------------------------------------------------------

    def stack_step(
        self,
        losses: Mapping[str, Tensor | None],
        *,
        features: Tensor,
        shared_params: Iterable[nn.Parameter],
        task_params: Mapping[str, Iterable[nn.Parameter]] | None = None,
        recompute_losses: Recompute | None = None,
        optimizer: LightningOptimizer | None = None,
    ) -> StepContext:
        """One optimisation step: ``zero_grad``, ``stack.backward``, ``optimizer.step()``,
        ``stack.after_step``. Arguments as :meth:`mtoframe.Stack.backward` and
        :meth:`mtoframe.Stack.after_step`; ``optimizer`` is needed only when
        ``configure_optimizers`` returns several. Returns the step's context (``ctx.raw_losses``,
        ``ctx.weights``, ``ctx.skipped``)."""
        opt = optimizer if optimizer is not None else self._only_optimizer()
        opt.zero_grad()
        # the stack's arithmetic stays out of Lightning's autocast, as in mtoframe's Trainer
        with torch.autocast(features.device.type, enabled=False):
            ctx = self.stack.backward(losses, features=features, shared_params=shared_params, task_params=task_params)
        if not ctx.skipped:
            opt.step()
        recompute = self._in_forward_context(recompute_losses) if recompute_losses is not None else None
        with torch.autocast(features.device.type, enabled=False):
            self.stack.after_step(ctx, recompute_losses=recompute)
        self._epoch_losses.add(ctx)
        return ctx

    def _only_optimizer(self) -> LightningOptimizer:
        opts = self.optimizers()
        if isinstance(opts, list):
            if len(opts) != 1:
                raise OptionError(f"configure_optimizers returned {len(opts)} optimisers: pass "
                                  "stack_step(..., optimizer=self.optimizers()[i])")
            return opts[0]
        if not isinstance(opts, LightningOptimizer):
            raise OptionError("stack_step needs the optimiser from configure_optimizers (torch.optim.Optimizer), "
                              f"got {type(opts).__name__}")
        return opts

    def _in_forward_context(self, fn: Recompute) -> Recompute:
        """``fn`` under the precision plugin's forward context (autocast for ``bf16-mixed``): the
        recomputed losses are evaluated as the step's were."""
        plugin = self.trainer.precision_plugin

        def recompute(train_mode: bool) -> Mapping[str, Tensor]:
            with plugin.forward_context():
                return fn(train_mode)

        return recompute

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Refuse strategies and precisions the stack cannot train under (see the module doc), then
        start the stack: learnable method parameters must exist before ``configure_optimizers`` and
        before a checkpoint is restored. Call ``super().setup(stage)`` when overriding."""
        if stage == "fit":
            self._check_trainer()
            self.stack.start()
            self._stack_started = True

    def _check_trainer(self) -> None:
        strategy = self.trainer.strategy
        if not isinstance(strategy, SingleDeviceStrategy):
            raise OptionError(
                f"mtoframe.lightning trains on one device; strategy {type(strategy).__name__} is not supported "
                "(DDP's reducer fires from .backward(), which per-task gradients never call). For several "
                "processes use `torchrun -m mtoframe train` or a Stack in your own loop under torch.distributed")
        precision = str(self.trainer.precision)
        if precision not in SUPPORTED_PRECISION:
            why = ("Lightning's GradScaler would unscale gradients the stack never scaled; use 'bf16-mixed', or "
                   "mtoframe.Trainer(grad_scaler=...)" if precision == "16-mixed"
                   else "the stack needs float32 or float64 parameters and gradients")
            raise OptionError(f"mtoframe.lightning supports precision {list(SUPPORTED_PRECISION)}, got "
                              f"{precision!r}: {why}")

    def on_train_epoch_end(self) -> None:
        """Epoch-level methods (DWA, STCH, GradNorm) get the epoch's mean raw loss per task."""
        self.stack.end_epoch({"epoch": self.stack.epoch, "train_loss": self._epoch_losses.means()})
        self._epoch_losses.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write the stack's state (and this epoch's running loss sums) into the checkpoint. Call
        ``super().on_save_checkpoint(checkpoint)`` when overriding."""
        checkpoint[CHECKPOINT_KEY] = {"stack": self.stack.state_dict(), "epoch_losses": self._epoch_losses.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the stack's state; a checkpoint without it is refused. Call
        ``super().on_load_checkpoint(checkpoint)`` when overriding."""
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            raise CheckpointError(f"this checkpoint has no {CHECKPOINT_KEY!r} entry (it was not written by an "
                                  "mtoframe StackModule): resuming would restart every method's state")
        self.stack.load_state_dict(saved["stack"])
        self._stack_started = True
        self._epoch_losses.load_state_dict(saved["epoch_losses"])

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> StackModule:
        # .to(device) / .double() reach the stack's learnable parameters in place, so the
        # optimiser (built from stack.param_groups()) keeps pointing at the same tensors
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if self._stack_started:
            with torch.no_grad():
                for p in self.stack.parameters():
                    p.data = fn(p.data)
                    if p.grad is not None:
                        p.grad.data = fn(p.grad.data)
        self._epoch_losses.apply(fn)
        return self
