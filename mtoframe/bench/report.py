"""Output of the benchmarks: terminal tables, JSON, PNG charts (optional ``plots`` extra) and
TensorBoard scalars."""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MtoError


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], *, align: str | None = None) -> str:
    """A plain-text table; numbers right-aligned (``align``: one of 'l'/'r' per column)."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    align = align or "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(header)))

    def line(vals: Sequence[str]) -> str:
        padded = (v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(vals, widths, align, strict=True))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.3g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-2) else f"{v:.2f}"
    return str(v)


def writable_dir(path: Path, *, option: str = "--out") -> Path:
    """Create ``path`` (with parents) and check that a file can be written in it, before any work
    starts: a run must not end, after minutes, in a directory it cannot write."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            what = "it or a parent exists and is not a directory"
        else:
            what = exc.strerror or str(exc)
        raise MtoError(f"{option} {path}: cannot create the output directory ({what}); "
                       f"give a directory that can be created and written") from exc
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".mtoframe-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MtoError(f"{option} {path}: the directory is not writable ({exc.strerror or exc}); "
                       f"give a directory that can be written") from exc
    return path


def write_json(path: Path, data: Any) -> None:
    """Atomic write: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def pyplot() -> Any | None:
    """matplotlib's pyplot on the Agg back-end, or None with a warning naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: skipping the PNG; install the 'plots' extra "
                      "(pip install 'mtoframe[plots]')", stacklevel=2)
        return None
    return plt


@dataclass(frozen=True)
class Panel:
    """One horizontal bar chart of a figure: a value per label (None or NaN: no bar)."""

    values: Sequence[float | None]
    xlabel: str
    #: symmetric half-widths, or [below, above] distances (matplotlib's ``xerr``)
    errors: Sequence[float] | Sequence[Sequence[float]] | None = None
    reference: float | None = None


def bar_panels(path: Path, labels: Sequence[str], panels: Sequence[Panel], *, title: str) -> bool:
    """Side-by-side bar charts sharing the labels; False (with a warning) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 0.35 * len(labels) + 1.5), squeeze=False)
    y = list(range(len(labels)))[::-1]
    for i, (ax, panel) in enumerate(zip(axes[0], panels, strict=True)):
        vals = [math.nan if v is None else v for v in panel.values]
        ax.barh(y, vals, xerr=panel.errors, color="tab:blue", alpha=0.8)
        ax.set_yticks(y, labels if i == 0 else [""] * len(labels))
        if panel.reference is not None:
            ax.axvline(panel.reference, color="k", lw=0.8, ls="--")
        ax.set_xlabel(panel.xlabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def tensorboard_scalars(log_dir: Path, scalars: Mapping[str, float], *, series: Mapping[str, Sequence[float]] = {},
                        text: Mapping[str, str] = {}) -> None:
    """Write summary scalars (step 0) and per-step series into one TensorBoard run directory."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(log_dir))
    try:
        for tag, v in scalars.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                w.add_scalar(tag, float(v), 0)
        for tag, vs in series.items():
            for i, v in enumerate(vs):
                w.add_scalar(tag, float(v), i)
        for tag, t in text.items():
            w.add_text(tag, t)
    finally:
        w.close()
