"""Small, seeded building blocks for tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from ..hookspecs import hookimpl
from ..model import MultiTaskModel, Task


@attrs.frozen
class GradientCase:
    """A named ``T×P`` gradient matrix (and losses) for property tests."""

    name: str
    grads: Tensor
    losses: Tensor


def gradient_families(
    *, seed: int = 0, dtype: torch.dtype = torch.float64, tasks: Sequence[int] = (2, 3, 5, 10), dim: int = 50
) -> Iterator[GradientCase]:
    """Seeded families: random, conflicting, rank-deficient, duplicate rows, a zero row, tiny
    (1e-8) and huge (1e8) scales, for each number of tasks."""
    g = torch.Generator().manual_seed(seed)
    for T in tasks:
        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=g, dtype=dtype)

        losses = torch.rand(T, generator=g, dtype=dtype) + 0.1
        base = randn(T, dim)
        yield GradientCase(f"random-T{T}", base, losses)
        conflict = base.clone()
        conflict[1] = -0.8 * conflict[0] + 0.2 * randn(dim)
        yield GradientCase(f"conflicting-T{T}", conflict, losses)
        low = randn(T, 2) @ randn(2, dim)
        yield GradientCase(f"rank2-T{T}", low, losses)
        dup = base.clone()
        dup[-1] = dup[0]
        yield GradientCase(f"duplicate-T{T}", dup, losses)
        zero = base.clone()
        zero[-1] = 0.0
        yield GradientCase(f"zero-row-T{T}", zero, losses)
        yield GradientCase(f"scale1e-8-T{T}", base * 1e-8, losses)
        yield GradientCase(f"scale1e8-T{T}", base * 1e8, losses)


def make_vector_model(*, tasks: Sequence[str] = ("a", "b", "c"), d_in: int = 8, d_rep: int = 6,
                      seed: int = 0, dtype: torch.dtype = torch.float64) -> MultiTaskModel:
    """A two-layer MLP encoder (``B×C`` representation) and one linear head per task."""
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, d_rep), nn.Tanh())
    heads = {t: nn.Linear(d_rep, 1) for t in tasks}
    return MultiTaskModel(encoder=enc, heads=heads).to(dtype)


def make_conv_model(*, tasks: Sequence[str] = ("a", "b", "c"), channels: int = 4, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> MultiTaskModel:
    """A small conv encoder (``B×C×H×W`` representation) and 1×1-conv heads (one channel out)."""
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, channels, 3, padding=1), nn.Tanh())
    heads = {t: nn.Conv2d(channels, 1, 1) for t in tasks}
    return MultiTaskModel(encoder=enc, heads=heads).to(dtype)


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    return ((pred - target) ** 2).mean()


def make_tasks(names: Sequence[str] = ("a", "b", "c")) -> list[Task]:
    """Regression tasks with a mean-squared-error loss."""
    from ..metrics import MeanError

    return [Task(n, loss=_mse, metrics=[MeanError("mae")]) for n in names]


def make_batch(model: MultiTaskModel, *, batch: int = 8, seed: int = 1,
               tasks: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """A seeded batch matching :func:`make_vector_model` or :func:`make_conv_model`."""
    g = torch.Generator().manual_seed(seed)
    p = next(model.parameters())
    first = next(iter(model.encoder.modules().__iter__().__next__().children()))
    if isinstance(first, nn.Conv2d):
        x = torch.randn(batch, first.in_channels, 6, 5, generator=g, dtype=p.dtype)
        shape: tuple[int, ...] = (batch, 1, 6, 5)
    else:
        assert isinstance(first, nn.Linear)
        x = torch.randn(batch, first.in_features, generator=g, dtype=p.dtype)
        shape = (batch, 1)
    names = list(tasks if tasks is not None else model.heads.keys())
    return x, {t: torch.randn(*shape, generator=g, dtype=p.dtype) for t in names}


def head_grads(model: MultiTaskModel, batch: tuple[Tensor, dict[str, Tensor]]) -> dict[str, tuple[Tensor, ...]]:
    """Each head's gradient of its own unweighted task loss (the MSE of :func:`make_tasks`) on
    ``batch``, for checking what a method's heads receive."""
    x, targets = batch
    z = model.encoder(x)
    return {t: torch.autograd.grad(_mse(model.heads[t](z), targets[t]), list(model.heads[t].parameters()))
            for t in targets}


def assert_heads_get_unweighted_gradients(method: Any) -> None:
    """Assert that one trainer step with ``method`` gives every head the gradient of its own
    unweighted task loss (on :func:`make_vector_model`), as the methods whose ``heads_receive``
    says so promise."""
    model = make_vector_model()
    trainer = make_trainer([method], model=model)
    batch = make_batch(model)
    expected = head_grads(model, batch)
    step_keeping_grads(trainer, batch)
    for t in model.heads:
        for p, e in zip(model.heads[t].parameters(), expected[t], strict=True):
            torch.testing.assert_close(p.grad, e)


def step_keeping_grads(trainer: Any, batch: Any) -> Any:
    """One ``trainer.step`` whose optimiser step is skipped, so ``.grad`` stays as the engine wrote it."""
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: None
    try:
        return trainer.step(batch)
    finally:
        trainer.optimizer.step = step


def make_trainer(methods: Sequence[Any] = (), *, model: MultiTaskModel | None = None, lr: float = 0.05,
                 optimizer: str = "sgd", **kwargs: Any) -> Any:
    """A :class:`mtoframe.Trainer` on :func:`make_vector_model` unless ``model`` is given."""
    from ..trainer import Trainer

    model = model if model is not None else make_vector_model()
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    opt = opt_cls(model.parameters(), lr=lr)
    return Trainer(model, make_tasks(list(model.heads.keys())), methods, optimizer=opt, **kwargs)


class PoisonGradient:
    """Observer plugin (``Trainer(plugins=[...])``): on the chosen steps the gradient reaching
    the heads' inputs becomes ``value`` (NaN by default) while the losses stay finite, as after
    an overflow inside a backward pass. ``task`` limits it to that task's head; without a
    gradient engine (EW) it is the gradient reaching ``Z``."""

    name = "poisongradient"

    def __init__(self, steps: Sequence[int], *, value: float = float("nan"), task: str | None = None) -> None:
        self.steps, self.value, self.task = set(steps), value, task

    @hookimpl
    def on_task_losses(self, ctx: Any) -> None:
        if ctx.step not in self.steps:
            return
        if ctx.head_inputs is None:
            chosen = (ctx.z,)
        elif self.task is None:
            chosen = ctx.head_inputs
        else:
            chosen = (ctx.head_inputs[ctx.tasks.index(self.task)],)
        for z in chosen:
            z.register_hook(lambda g: torch.full_like(g, self.value))
