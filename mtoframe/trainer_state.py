"""A Trainer's checkpoint state: what it holds, loading it back, writing it to a file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import FORMAT, check_plain, rng_state, save_atomic, set_rng_state
from .errors import MtoError
from .resume import check_finite_model, check_fits
from .tblog import is_rank_zero

if TYPE_CHECKING:
    from .trainer import Trainer


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """Model, optimiser (including method parameter groups), scheduler, GradScaler, the stack's
    state (methods, their parameters, step, epoch, counters), history and the global RNG states."""
    stack = trainer.stack.state_dict()
    return {
        "format": FORMAT,
        "stack": stack["stack"],
        "optimizer_class": type(trainer.optimizer).__name__,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "grad_scaler": trainer.amp.scaler.state_dict() if trainer.amp.scaler is not None else None,
        "methods": stack["methods"],
        "method_params": stack["method_params"],
        "step": stack["step"],
        "epoch": stack["epoch"],
        "started": trainer._started,
        "counters": stack["counters"],
        "history": list(trainer.history),
        "rng": rng_state(),
    }


def load_trainer_state(trainer: Trainer, state: Mapping[str, Any]) -> None:
    check_fits(state, [m.name for m in trainer.stack], trainer.optimizer)
    trainer.model.load_state_dict(state["model"])
    # on_train_start registers method parameter groups; the optimiser state expects them
    trainer.start()
    trainer.stack.load_state_dict({k: state[k] for k in ("stack", "methods", "method_params", "step", "epoch",
                                                          "counters")})
    trainer.optimizer.load_state_dict(state["optimizer"])
    if (state["scheduler"] is None) != (trainer.scheduler is None):
        raise MtoError("checkpoint and trainer disagree on whether there is an LR scheduler")
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    if (state["grad_scaler"] is None) != (trainer.amp.scaler is None):
        raise MtoError("checkpoint and trainer disagree on whether there is a GradScaler")
    if trainer.amp.scaler is not None:
        trainer.amp.scaler.load_state_dict(state["grad_scaler"])
    trainer.history = list(state["history"])
    set_rng_state(state["rng"])


def save_trainer_checkpoint(trainer: Trainer, path: str | Path, meta: Mapping[str, Any] | None) -> None:
    if not is_rank_zero():
        return
    check_finite_model(trainer.model, path)
    state = trainer_state(trainer)
    for name, method_state in state["methods"].items():
        check_plain(method_state, f"the state of method {name!r}")
    if meta is not None:
        check_plain(dict(meta), "the checkpoint's meta")
        state["meta"] = dict(meta)
    save_atomic(state, path)
