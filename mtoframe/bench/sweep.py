"""``mtoframe bench --tasks 2,3,5,10,20,40``: how the step time grows with the number of tasks.

One ordinary timing run (:func:`mtoframe.bench.speed.run_speed`: interleaved rounds, paired
ratios) per task count on the ``manytask`` workload, each written in full under ``T<n>/``; this
module adds the summary across them: per stack the headline-clock median step time at every T,
the least-squares line ``time = a + b*T`` through those medians with a 95% interval for the slope
``b`` and the RMS residual (how far from linear the growth is), the paired ratios to EW and to
the peer at every T, and a chart of time against T.

The medians of different T come from different runs (different moments of a shared machine), so
the fit carries the machine's drift between runs; the ratios beside it are paired within a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import numpy as np

from ..errors import MtoError
from . import report, stats


@attrs.frozen
class LinearFit:
    """``y = a + b*x`` by least squares; ``b_interval`` is the two-sided ``CONFIDENCE``
    Student-t interval of the slope (None with fewer than 3 points), ``residual`` the RMS of
    the residuals."""

    a: float
    b: float
    b_interval: tuple[float, float] | None
    residual: float
    n: int


def fit_linear(x: Sequence[float], y: Sequence[float], *, confidence: float = stats.CONFIDENCE) -> LinearFit:
    """Ordinary least squares of ``y`` on ``[1, x]``."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1 or len(xs) < 2:
        raise MtoError(f"a linear fit needs two or more (x, y) pairs of equal length, got {len(xs)} and {len(ys)}")
    if np.ptp(xs) == 0:
        raise MtoError("a linear fit needs at least two distinct x values")
    design = np.stack([np.ones_like(xs), xs], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, ys, rcond=None)
    resid = ys - (a + b * xs)
    rms = float(np.sqrt(np.mean(resid**2)))
    n = len(xs)
    if n < 3:
        return LinearFit(float(a), float(b), None, rms, n)
    from scipy.stats import t  # type: ignore[import-untyped, unused-ignore]

    # the slope's standard error from the residual variance with n - 2 degrees of freedom
    se = math.sqrt(float(resid @ resid) / (n - 2) / float(((xs - xs.mean()) ** 2).sum()))
    half = float(t.ppf((1 + confidence) / 2, n - 2)) * se
    return LinearFit(float(a), float(b), (float(b) - half, float(b) + half), rms, n)


def headline_ms(record: Mapping[str, Any]) -> float:
    """The record's median step time on its run's headline clock (CPU or wall)."""
    key = "cpu_ms_median" if record["run"]["headline"] == "cpu" else "ms_median"
    return float(record[key])


def _ok(records: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {r["stack"]: r for r in records if r.get("error") is None}


def sweep_table(
    runs: Mapping[int, Sequence[Mapping[str, Any]]],
) -> tuple[list[str], list[list[Any]], dict[str, LinearFit]]:
    """``(header, rows, fits)``: one row per stack timed at two or more T, its headline-clock
    median ms at every T ('-' where it failed or was not timed) and its fitted line."""
    counts = sorted(runs)
    timed = {T: _ok(runs[T]) for T in counts}
    stacks: list[str] = []
    for T in counts:
        stacks += [s for s in timed[T] if s not in stacks]
    header = ["stack", *(f"T={T} ms" for T in counts), "a ms", "b ms/task", "95% CI b", "RMS resid ms"]
    rows, fits = [], {}
    for s in stacks:
        points = [(T, headline_ms(timed[T][s])) for T in counts if s in timed[T]]
        cells = [f"{headline_ms(timed[T][s]):.2f}" if s in timed[T] else "-" for T in counts]
        if len(points) < 2:
            rows.append([s, *cells, "-", "-", "-", "-"])
            continue
        fit = fit_linear([p[0] for p in points], [p[1] for p in points])
        fits[s] = fit
        ci = "-" if fit.b_interval is None else f"[{fit.b_interval[0]:.3f}, {fit.b_interval[1]:.3f}]"
        rows.append([s, *cells, f"{fit.a:.2f}", f"{fit.b:.3f}", ci, f"{fit.residual:.2f}"])
    return header, rows, fits


def ratio_table(runs: Mapping[int, Sequence[Mapping[str, Any]]], key: str) -> tuple[list[str], list[list[Any]]]:
    """Paired ratio ``key`` (``ratio_to_ew`` or ``ratio_to_peer``) with its interval, per stack and T."""
    counts = sorted(runs)
    timed = {T: _ok(runs[T]) for T in counts}
    stacks: list[str] = []
    for T in counts:
        stacks += [s for s, r in timed[T].items() if r.get(key) is not None and s not in stacks]
    rows = []
    for s in stacks:
        cells = []
        for T in counts:
            r = timed[T].get(s)
            if r is None or r.get(key) is None:
                cells.append("-")
                continue
            ci = r.get(f"{key}_ci")
            cells.append(f"{r[key]:.2f}" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"))
        rows.append([s, *cells])
    return ["stack", *(f"T={T}" for T in counts)], rows


def plot_sweep(path: Path, runs: Mapping[int, Sequence[Mapping[str, Any]]], *, title: str) -> bool:
    """Step time against T on log-log axes, one line per stack: mtoframe solid, its peer dashed in
    the same colour; the noise reference (EW's second copy) is left to the tables. False without
    matplotlib."""
    plt = report.pyplot()
    if plt is None:
        return False
    counts = sorted(runs)
    timed = {T: _ok(runs[T]) for T in counts}
    stacks: list[str] = []
    for T in counts:
        stacks += [s for s, r in timed[T].items() if s not in stacks and r.get("kind") != "reference"]
    bases = list(dict.fromkeys(s.split(":", 1)[-1] for s in stacks))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in stacks:
        xs = [T for T in counts if s in timed[T]]
        ys = [headline_ms(timed[T][s]) for T in xs]
        peer = ":" in s
        ax.plot(xs, ys, "--" if peer else "-", marker="o", markersize=4, label=s,
                color=colours(bases.index(s.split(":", 1)[-1]) % 10))
    clock = next(iter(timed[counts[0]].values()))["run"]["headline"] if timed[counts[0]] else "cpu"
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(counts, [str(T) for T in counts])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.set_xlabel("tasks T")
    ax.set_ylabel(f"median step time, {clock} clock (ms)")
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_sweep_report(runs: Mapping[int, Sequence[Mapping[str, Any]]], out: Path, *, stream: TextIO) -> None:
    """Print and write (``sweep.md``, ``sweep.json``, ``sweep.png``) the summary across task counts."""
    if not runs:
        raise MtoError("a task sweep needs at least one timing run")
    header, rows, fits = sweep_table(runs)
    ew_head, ew_rows = ratio_table(runs, "ratio_to_ew")
    peer_head, peer_rows = ratio_table(runs, "ratio_to_peer")
    sections = [("step time (ms, median over rounds, headline clock) and the fit time = a + b*T", header, rows),
                ("x EW (paired per-round ratio, median, 95% CI)", ew_head, ew_rows)]
    if peer_rows:
        sections.append(("x the TorchJD peer (paired per-round ratio, median, 95% CI)", peer_head, peer_rows))
    md = []
    for caption, head, body in sections:
        print(f"\n{caption}\n", file=stream)
        print(report.table(body, head), file=stream)
        md.append(f"{caption}\n\n{report.markdown_table(body, head)}")
    (out / "sweep.md").write_text("\n\n".join(md) + "\n")
    report.write_json(out / "sweep.json", {
        "tasks": sorted(runs),
        "fits": {s: attrs.asdict(f) for s, f in fits.items()},
        "runs": {str(T): list(runs[T]) for T in sorted(runs)},
    })
    png = plot_sweep(out / "sweep.png", runs, title="step time against the number of tasks (manytask)")
    print(f"\nwrote {out / 'sweep.md'}, {out / 'sweep.json'}" + (f", {out / 'sweep.png'}" if png else "")
          + f"; each T's full report under {out}/T<n>/", file=stream)
