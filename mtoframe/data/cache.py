"""Build-once dataset caches: written beside the target and renamed into place, so a crash or a
concurrent run never leaves a half-written cache that looks complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import OptionError


def build_once(root: Path, fill: Callable[[Path], None], stamp: str, *, what: str) -> Path:
    """Return ``root``, first calling ``fill(tmp)`` and renaming ``tmp`` to ``root`` unless
    ``root/complete`` exists. A non-empty ``root`` without the marker is an error (never deleted)."""
    if (root / "complete").exists():
        return root
    if root.exists() and any(root.iterdir()):
        raise OptionError(f"cache_dir {root} exists and is not a complete {what} cache; "
                          "give an empty or new directory (nothing there is deleted)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        fill(tmp)
        (tmp / "complete").write_text(stamp + "\n")
        if root.exists():
            root.rmdir()  # empty, checked above
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / "complete").exists():  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
