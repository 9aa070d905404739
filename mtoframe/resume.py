"""Resume that tells the truth: a checkpoint is checked against the trainer it is loaded into,
and (for ``mtoframe train --resume``) the run's config against the config it was saved with.

Policy (see ``docs/failures.md``): changes that only steer the rest of the run (``epochs``,
logging, ``device``, ``nonfinite``, data workers) and the optimiser's hyper-parameters are
applied and reported; anything the saved state was built from (seed, data, model, tasks, batch
size, methods and their options, the optimiser's kind) is refused, naming each difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, MtoError

#: keys that may change on resume: they steer what is left of the run, not what was saved
STEERING = frozenset({"epochs", "log_dir", "log_every", "progress", "device", "nonfinite", "checkpoint",
                      "data.workers", "data.cache_dir"})
#: optimiser hyper-parameters written into the restored optimiser's (model) parameter groups
APPLIED = {"optimizer.lr": "lr", "optimizer.weight_decay": "weight_decay", "optimizer.momentum": "momentum"}
_UNSET = "<unset>"  # a key one of the two configs lacks (flat configs hold only plain values)


def config_changes(
        saved: Mapping[str, Any] | None, now: Mapping[str, Any], path: str | Path) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, now)}`` of every difference; raises :class:`CheckpointError` naming each
    difference that cannot be applied to a resumed run."""
    if saved is None:
        raise CheckpointError(f"checkpoint {path} has no saved run config (it was written by Trainer.save_checkpoint "
                              "without meta, or by an older mtoframe), so a resume cannot check that it fits; "
                              "start without --resume or point 'checkpoint' elsewhere")
    changes = {k: (saved.get(k, _UNSET), now.get(k, _UNSET)) for k in sorted(set(saved) | set(now))
               if saved.get(k, _UNSET) != now.get(k, _UNSET)}
    refused = [k for k in changes if k not in STEERING and k not in APPLIED]
    if refused:
        diff = "; ".join(f"{k}: {_show(changes[k][0])} in the checkpoint, {_show(changes[k][1])} now" for k in refused)
        raise CheckpointError(f"cannot resume from {path}: the run differs from the one that wrote it in {diff}. "
                              "The saved state was built from these values; restore them, or train from scratch "
                              "without --resume (or with another checkpoint path)")
    return changes


def _show(v: Any) -> str:
    return "(unset)" if v is _UNSET else repr(v)


def apply_changes(changes: Mapping[str, tuple[Any, Any]], optimizer: torch.optim.Optimizer,
                  echo: Callable[[str], Any] | None) -> None:
    """Write changed optimiser hyper-parameters into the restored optimiser's model groups (method
    groups keep their own) and report every change that is applied."""
    for key, (old, new) in changes.items():
        if key in APPLIED:
            for group in optimizer.param_groups:
                if "mtoframe_method" not in group and APPLIED[key] in group:
                    group[APPLIED[key]] = new
        if echo:
            echo(f"resume: {key} changed from {old!r} to {new!r} (applied)")


def check_fits(state: Mapping[str, Any], stack: Sequence[str], optimizer: torch.optim.Optimizer) -> None:
    """Refuse a checkpoint written by another stack or with another kind of optimiser, before
    any of it is loaded."""
    if state.get("stack") != list(stack):
        raise CheckpointError(
            f"checkpoint was written by the stack {state.get('stack')}, this trainer has {list(stack)}")
    saved = state.get("optimizer_class")
    if saved is not None and saved != type(optimizer).__name__:
        raise CheckpointError(f"checkpoint was written with a {saved} optimiser, this trainer has "
                              f"{type(optimizer).__name__}; their states do not convert")


@contextmanager
def checkpoint_errors(path: str | Path) -> Iterator[None]:
    """Re-raise a failure to load a (readable) checkpoint's state as one :class:`CheckpointError`
    naming the file."""
    try:
        yield
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this trainer: {exc}") from None
    except (MtoError, KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path} does not fit this trainer ({type(exc).__name__}: {detail}); it was "
                              "written for another model, stack or optimiser, or is damaged") from None


def check_finite_model(model: nn.Module, path: str | Path) -> None:
    """Refuse to write a checkpoint from a model with NaN/inf parameters or buffers: the last good
    checkpoint must survive (one host read per save)."""
    values = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point() and t.numel()]
    if not values:
        return
    if bool(torch.isfinite(torch.stack(torch._foreach_norm([v.detach() for v in values], float("inf")))).all()):
        return
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    bad = [n for n, t in named.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    raise CheckpointError(f"not writing checkpoint {path}: the model has non-finite values in {bad[:6]}"
                          f"{f' and {len(bad) - 6} more' if len(bad) > 6 else ''}; the previous checkpoint is kept")
