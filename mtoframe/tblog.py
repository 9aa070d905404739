"""TensorBoard run directory (rank 0 only) and the per-step scalars of DESIGN §6."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .context import StepContext
from .method import Method


def is_rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


class RunLogger:
    """Writes scalars and hyper-parameters into one run directory."""

    def __init__(self, log_dir: str | Path, *, hparams: Mapping[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        if hparams:
            self.write_hparams(hparams)

    def write_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
        # Written into this run directory itself: add_hparams would make a sub-run per call.
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        flat = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str) for k, v in hparams.items()}
        exp, ssi, sei = hparams_summary(flat, dict(metrics or {}))
        fw = self.writer._get_file_writer()
        for s in (exp, ssi, sei):
            fw.add_summary(s)
        self.writer.add_text("hparams", "\n".join(f"    {k} = {v}" for k, v in flat.items()))

    def scalars(self, values: Mapping[str, Tensor | float], step: int) -> None:
        write_scalars(self.writer, values, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_scalars(writer: Any, values: Mapping[str, Tensor | float], step: int) -> None:
    """``writer.add_scalar`` each value, with one host transfer for all the tensors."""
    if not values:
        return
    keys = [k for k, v in values.items() if isinstance(v, Tensor)]
    resolved: dict[str, float] = {}
    if keys:
        host = torch.stack([values[k].detach().float().reshape(()) for k in keys]).cpu().tolist()  # type: ignore[union-attr]
        resolved = dict(zip(keys, host))
    for k, v in values.items():
        writer.add_scalar(k, float(resolved.get(k, v)), step)


def step_scalars(ctx: StepContext, step_ms: float) -> dict[str, Tensor | float]:
    """The scalars of one logging step: losses, weights, gradient norms and cosines, timings,
    and whatever the methods recorded with ``ctx.log``."""
    out: dict[str, Tensor | float] = {}
    raw = ctx.raw_losses.detach() if ctx.raw_losses is not None else None
    w = ctx.weights.detach()
    if ctx.head_weights is not None:
        w = w * ctx.head_weights.detach()
    for i, t in enumerate(ctx.tasks):
        if raw is not None:
            out[f"loss/{t}"] = raw[i]
        out[f"weight/{t}"] = w[i]
    if ctx.raw_grads is not None:
        g = ctx.raw_grads.detach()
        norms = g.norm(dim=1)
        cos = (g @ g.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-30)
        for i, a in enumerate(ctx.tasks):
            out[f"grad/norm/{a}"] = norms[i]
            for j in range(i + 1, len(ctx.tasks)):
                out[f"grad/cos/{a}-{ctx.tasks[j]}"] = cos[i, j]
    out["time/step_ms"] = step_ms
    for key, ms in ctx.timings.items():
        out[f"time/{key}_ms"] = ms
    out.update(ctx.scalars)
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def run_hparams(stack: Sequence[Method], optimizer: torch.optim.Optimizer,
                extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's hyper-parameters: the stack, each method's configuration, the optimiser."""
    hp: dict[str, Any] = {"stack": "+".join(m.name for m in stack) or "ew"}
    for m in stack:
        hp[f"method/{m.name}"] = repr(m)
    hp["optimizer"] = type(optimizer).__name__
    hp["lr"] = optimizer.param_groups[0].get("lr")
    hp.update(extra or {})
    return hp


def epoch_scalars(stats: Mapping[str, Any]) -> dict[str, Tensor | float]:
    """The scalars of one epoch's stats: training losses, validation metrics, Δp_task, Δm."""
    values: dict[str, Tensor | float] = {f"epoch/loss/{t}": v for t, v in stats["train_loss"].items()}
    for task, metrics in stats.get("val", {}).items():
        for metric, v in metrics.items():
            values[f"metric/val/{task}/{metric}"] = v
    for key, tag in (("delta_p_task", "delta/p_task"), ("delta_m", "delta/m")):
        if key in stats:
            values[tag] = stats[key]
    return values
