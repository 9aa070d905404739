"""Statistics of the benchmarks. Timing: per-round paired ratios, their bootstrap intervals, and
the verdict of a comparison of two runs. Quality: :func:`mean_ci`, the Student-t interval of a
mean over seeds, which on per-seed **paired** differences (same seeds and data order for both
stacks) is the paired t-interval, and :func:`difference_verdict`.

Why paired ratios: every round times every contender back to back, so a round's EW time and a
stack's time were taken under the same machine load; their quotient cancels the load, which
drifts by tens of percent between seconds on a shared machine. The median over rounds of
those quotients is robust to a round spoiled by a stray pause of one contender.

Intervals come from :func:`scipy.stats.bootstrap` (percentile method, seeded so a report is
reproducible from its ``results.json``). The percentile method rather than scipy's default BCa:
the bootstrap distribution of the median of a few dozen rounds is discrete (sample values and
midpoints only), and BCa's bias and acceleration corrections, estimated from it, add little but
variance there. The coverage of these intervals is checked in ``tests/test_bench_stats.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from ..errors import MtoError

#: two-sided confidence level of every interval
CONFIDENCE = 0.95
#: bootstrap resamples; the median is vectorised, so this costs milliseconds
N_RESAMPLES = 4000
#: relative half-width above which an interval cannot rank stacks closer than that
NOISY_HALF_WIDTH = 0.10


@attrs.frozen
class Estimate:
    """A point estimate with its ``CONFIDENCE`` interval; ``low``/``high`` are None when the
    sample is too small to resample (fewer than 2 values)."""

    value: float
    low: float | None
    high: float | None
    n: int

    @property
    def interval(self) -> list[float] | None:
        return None if self.low is None or self.high is None else [self.low, self.high]

    def relative_half_width(self) -> float:
        """Half the interval's width over the estimate (inf without an interval)."""
        if self.low is None or self.high is None or self.value == 0:
            return float("inf")
        return (self.high - self.low) / 2 / abs(self.value)


def summarise_times(times_ms: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, IQR, mean and minimum of step times (ms)."""
    x = _sample(times_ms, "step times")
    q25, med, q75 = np.quantile(x, [0.25, 0.5, 0.75])
    return {"median_ms": float(med), "q25_ms": float(q25), "q75_ms": float(q75), "iqr_ms": float(q75 - q25),
            "mean_ms": float(x.mean()), "min_ms": float(x.min()), "n": float(len(x))}


def per_round_ratios(times: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """``times[r] / baseline[r]`` for every round ``r`` (both measured in the same round)."""
    a, b = _sample(times, "times"), _sample(baseline, "baseline times")
    if a.shape != b.shape:
        raise MtoError(f"paired ratios need one time per round from both: got {len(a)} and {len(b)} rounds")
    if (b <= 0).any():
        raise MtoError("paired ratios need positive baseline times")
    return [float(r) for r in a / b]


def median_ci(sample: Sequence[float], *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
              seed: int = 0) -> Estimate:
    """Median of ``sample`` with a percentile-bootstrap interval over its values."""
    x = _sample(sample, "sample")
    value = float(np.median(x))
    if len(x) < 2:
        return Estimate(value, None, None, len(x))
    if np.all(x == x[0]):  # every resample has the same median; scipy would warn of a degenerate sample
        return Estimate(value, value, value, len(x))
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.median, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    vectorized=True, axis=-1, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    # Every resample's median lies within the sample's range, so the percentile interval does too;
    # the percentile's interpolation can round an end one ulp outside it.
    low, high = (float(np.clip(v, x.min(), x.max())) for v in (ci.low, ci.high))
    return Estimate(value, low, high, len(x))


def paired_ratio_ci(times: Sequence[float], baseline: Sequence[float], *, confidence: float = CONFIDENCE,
                    n_resamples: int = N_RESAMPLES, seed: int = 0) -> Estimate:
    """Median over rounds of ``times[r] / baseline[r]``, with a bootstrap interval over rounds."""
    return median_ci(per_round_ratios(times, baseline), confidence=confidence, n_resamples=n_resamples, seed=seed)


def paired_ratios_ci(times: Mapping[str, Sequence[float]], baseline: str, *, confidence: float = CONFIDENCE,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Estimate]:
    """:func:`paired_ratio_ci` of every contender against the contender named ``baseline``."""
    if baseline not in times:
        raise MtoError(f"baseline {baseline!r} was not timed; timed: {sorted(times)}")
    return {name: paired_ratio_ci(ts, times[baseline], confidence=confidence, n_resamples=n_resamples, seed=seed)
            for name, ts in times.items()}


def ratio_of_medians_ci(old: Sequence[float], new: Sequence[float], *, confidence: float = CONFIDENCE,
                        n_resamples: int = N_RESAMPLES, seed: int = 0) -> Estimate:
    """``median(new) / median(old)`` for two independent samples (two runs), with an interval from
    resampling each sample on its own (rounds of different runs are not paired)."""
    a, b = _sample(old, "old sample"), _sample(new, "new sample")
    if (a <= 0).any() or (b <= 0).any():
        raise MtoError("a ratio of medians needs positive values")
    value = float(np.median(b) / np.median(a))
    if len(a) < 2 or len(b) < 2:
        return Estimate(value, None, None, min(len(a), len(b)))

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(np.median(y, axis=axis) / np.median(x, axis=axis))

    from scipy.stats import bootstrap

    res = bootstrap((a, b), stat, paired=False, confidence_level=confidence, n_resamples=n_resamples,
                    method="percentile", vectorized=True, axis=-1, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    low, high = float(ci.low), float(ci.high)
    if np.isnan(low) or np.isnan(high):  # both samples constant: no spread to resample
        low = high = value
    return Estimate(value, low, high, min(len(a), len(b)))


def change_verdict(change: Estimate) -> str:
    """'slower' / 'faster' when the interval of new/old excludes 1, else 'same within noise'."""
    if change.low is None or change.high is None:
        return "same within noise"
    if change.low > 1:
        return "slower"
    if change.high < 1:
        return "faster"
    return "same within noise"


def mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE) -> tuple[float, tuple[float, float]]:
    """``(mean, (low, high))``: the two-sided Student-t interval of the mean of ``values``,
    ``mean ± t_{(1+confidence)/2, n−1} · s/√n`` (``s`` the sample standard deviation).

    Over a handful of seeds the t-interval, not a bootstrap: resampling three or five values
    cannot estimate their spread. One value has no spread to estimate: its interval is
    ``(nan, nan)``, never a zero-width interval that would read as certainty.
    """
    if not 0.0 < confidence < 1.0:
        raise MtoError(f"confidence must be in (0, 1), got {confidence}")
    x = _sample(values, "mean_ci")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, (float("nan"), float("nan"))
    from scipy.stats import t

    half = float(t.ppf((1.0 + confidence) / 2.0, len(x) - 1)) * float(x.std(ddof=1)) / float(np.sqrt(len(x)))
    return mean, (mean - half, mean + half)


def difference_verdict(ci: Sequence[float], *, higher_is_better: bool = True) -> str:
    """``"better"`` / ``"worse"`` for a difference only when its interval excludes 0, else
    ``"no difference"`` (also when the interval is undefined)."""
    low, high = ci
    if np.isnan(low) or np.isnan(high) or low <= 0.0 <= high:
        return "no difference"
    return "better" if (low > 0.0) == higher_is_better else "worse"


def _sample(xs: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(xs, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise MtoError(f"{what}: need a non-empty list of numbers, got {len(x) if x.ndim == 1 else x.shape}")
    if not np.isfinite(x).all():
        raise MtoError(f"{what}: every value must be finite")
    return x
