"""Statistics of benchmark results over seeds.

:func:`mean_ci` is the Student-t interval of a mean: with per-seed **paired** differences (the
same seeds and data order for both stacks) it is the paired t-interval, the test a reviewer
expects for "is this stack better than EW" over a handful of seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from ..errors import OptionError


def mean_ci(values: Sequence[float], *, level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """``(mean, (low, high))``: the two-sided Student-t confidence interval of the mean of
    ``values`` (``mean ± t_{(1+level)/2, n−1} · s/√n``, ``s`` the sample standard deviation).

    One value has no spread to estimate: its interval is ``(nan, nan)``, never a zero-width
    interval that would read as certainty. NaN values are an error, not dropped.
    """
    if not 0.0 < level < 1.0:
        raise OptionError(f"level must be in (0, 1), got {level}")
    xs = [float(v) for v in values]
    if not xs:
        raise OptionError("mean_ci needs at least one value")
    if any(math.isnan(x) for x in xs):
        raise OptionError(f"mean_ci got NaN among its values: {xs}")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, (math.nan, math.nan)
    half = t_quantile(level, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, (mean - half, mean + half)


def t_two_sided(t: float, df: int) -> float:
    """``P(|T| ≤ t)`` for Student's t with integer ``df`` ≥ 1, in closed form (Abramowitz & Stegun
    26.7.3–4: with ``θ = atan(t/√df)``, a finite series in ``cos² θ``), so no scipy is needed."""
    theta = math.atan(t / math.sqrt(df))
    c2, sin = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(2, df, 2):  # 1 + (1/2)c² + (1·3)/(2·4)c⁴ + … up to c^(df−2)
            term *= c2 * (k - 1) / k
            total += term
        return sin * total
    if df == 1:
        return 2.0 * theta / math.pi
    term, total = 1.0, 1.0
    for k in range(3, df, 2):  # 1 + (2/3)c² + (2·4)/(3·5)c⁴ + … up to c^(df−3)
        term *= c2 * (k - 1) / k
        total += term
    return 2.0 / math.pi * (theta + sin * math.cos(theta) * total)


def t_quantile(level: float, df: int) -> float:
    """The ``t`` with ``P(|T| ≤ t) = level`` (the two-sided interval's multiplier), by bisection
    on :func:`t_two_sided` to float precision."""
    if not isinstance(df, int) or df < 1:
        raise OptionError(f"degrees of freedom must be a positive integer, got {df!r}")
    lo, hi = 0.0, 1.0
    while t_two_sided(hi, df) < level:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2.0


def verdict(ci: tuple[float, float], *, higher_is_better: bool = True) -> str:
    """``"better"`` / ``"worse"`` only when the interval excludes 0, else ``"no difference"``
    (also when the interval is undefined)."""
    low, high = ci
    if math.isnan(low) or math.isnan(high) or low <= 0.0 <= high:
        return "no difference"
    return "better" if (low > 0.0) == higher_is_better else "worse"
