"""Output paths of a run, checked before any work starts: no output may replace an input or
another output, none may be a device node or a directory, and each one's directory must be
creatable. Symlinks are written through (their targets are what get compared and replaced)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .errors import MtoError, OptionError


def resolve_output(path: str | os.PathLike[str], what: str, *, error: type[MtoError] = OptionError) -> Path:
    """``path`` with symlinks resolved, refusing an existing non-regular file and a parent that is
    a file; raises ``error`` naming ``what``."""
    resolved = Path(os.path.realpath(path))
    if resolved.exists() and not resolved.is_file():
        kind = "a directory" if resolved.is_dir() else "not a regular file (a device node, FIFO or socket)"
        raise error(f"{what} {path} is {kind}; mtoframe writes only regular files")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise error(f"{what} {path} cannot be created: {parent} is a file, not a directory")
            break
    return resolved


def check_outputs(inputs: Mapping[str, str | os.PathLike[str] | None],
                  outputs: Mapping[str, str | os.PathLike[str] | None]) -> dict[str, Path]:
    """Resolve ``{what: path}`` outputs, refuse any that coincide with an input or with each other,
    and create their directories; returns the resolved outputs."""
    seen: dict[Path, str] = {Path(os.path.realpath(p)): what for what, p in inputs.items() if p is not None}
    resolved: dict[str, Path] = {}
    for what, p in outputs.items():
        if p is None:
            continue
        path = resolve_output(p, what)
        if path in seen:
            raise OptionError(f"{what} {p} is the same file as the {seen[path]}; writing it would destroy that. "
                              "Give each output its own path")
        seen[path] = what
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OptionError(f"cannot create the directory of {what} {p}: {exc.strerror or exc}") from exc
        if not os.access(path.parent, os.W_OK):
            raise OptionError(f"{what} {p} cannot be written: directory {path.parent} is not writable")
        resolved[what] = path
    return resolved


def write_output(path: Path, text: str, what: str) -> None:
    """Write ``text`` to an output checked by :func:`check_outputs`; a full disk or a vanished
    directory is an error naming the output."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
