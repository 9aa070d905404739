"""Atomic checkpoint files and the process-wide random-number-generator state.

Checkpoints contain only tensors and plain containers so that they load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import glob
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from .errors import CheckpointError
from .outputs import resolve_output

#: the ``format`` entry of trainer checkpoints
FORMAT = 1


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    # legacy=True (the default) always returns the tuple form; numpy's stubs also allow a dict
    legacy = cast("tuple[str, np.ndarray[Any, Any], int, int, float]", np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = legacy
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]  # unannotated in torch
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``:
    a crash at any point leaves either the previous checkpoint or the new one, never a torn file.

    A symlinked ``path`` is written through (its target is replaced); an existing ``path`` that is
    not a regular file (a device node, a directory) is refused. Temporary files left by an earlier
    save of the same file that crashed are removed first."""
    path = resolve_output(path, "checkpoint", error=CheckpointError)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a vanished directory: the previous checkpoint stays
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path} (the previous one is kept): "
                              f"{exc.strerror or exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: what ``torch.load(weights_only=True)`` reads back on every supported torch (sets only from 2.5)
PLAIN = (torch.Tensor, int, float, complex, bool, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def check_plain(obj: Any, where: str, key: str = "") -> None:
    """Raise :class:`CheckpointError` naming ``where`` and the key path of the first value in
    ``obj`` that a weights-only load would refuse: checked when saving, not found on resume."""
    if isinstance(obj, PLAIN):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise CheckpointError(f"{where} has a key of type {type(k).__name__} at {key or 'the top level'}; "
                                      "checkpoint keys must be strings or numbers")
            check_plain(v, where, f"{key}.{k}" if key else str(k))
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, where, f"{key}[{i}]")
        return
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    raise CheckpointError(f"{where} holds a {kind} at key {key or '(top level)'!r}, which a weights-only torch.load "
                          "refuses on resume; store tensors, numbers, strings and lists/dicts of them "
                          "(a numpy array as torch.from_numpy(a), a set as a sorted list)")


def load(path: str | Path, *, map_location: Any = None) -> Any:
    """Read a checkpoint with ``weights_only=True``; every way it can fail is one
    :class:`CheckpointError` naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): a save was interrupted or the file was truncated")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message advises turning weights_only off: never for a file that needs it
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint (it does not unpickle: "
                                  f"{_last_line(exc)})") from None
        raise CheckpointError(f"checkpoint {path} holds Python objects other than tensors and plain containers "
                              f"({found.group(1)}); mtoframe checkpoints never do, so it was not written by mtoframe "
                              "(or was tampered with) and is not loaded") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = f"format {state.get('format')!r}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} is not an mtoframe trainer checkpoint (expected format {FORMAT}, "
                              f"found {got})")
    return state


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _last_line(exc: BaseException) -> str:
    # torch puts its advice first and the unpickler's own complaint last
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip() and "weights_only" not in ln]
    return (lines or [type(exc).__name__])[-1].strip()[:200]
