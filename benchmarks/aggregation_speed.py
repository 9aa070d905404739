"""Per-call aggregation time of the gradient methods on bare matrices (not a test).

For every installed gradient method (``mtoframe.available()``), ``mtoframe.aggregate`` is timed
on float32 ``3×1,000,000`` and ``10×100,000`` matrices. Each call gets a *different* matrix
(``--variants`` of them, in rotation), so warm-started methods (Nash-MTL) cannot skip their
solve by meeting the same Gram matrix again. Reported: median and p90 over ``--repeats`` calls,
and ``G.sum(0)`` (EW's aggregation) measured in the same loop as the floor. For the
convex-programming methods the host-side part (solver only, from the ``T×T`` Gram matrix) is
timed separately, together with the mean number of solves per call.

Goal (issue 3): Nash-MTL and CAGrad under 3 ms per call at T = 3.

    python benchmarks/aggregation_speed.py [--repeats 30] [--variants 4] [--threads 1]
        [--methods nashmtl,cagrad,fairgrad]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

import mtoframe
from mtoframe.method import GRADIENT_ROLES
from mtoframe.registry import get_registry

SHAPES = ((3, 1_000_000), (10, 100_000))


def gradient_methods() -> list[str]:
    reg = get_registry()
    return [n for n in mtoframe.available() if reg.get(n).cls.roles & GRADIENT_ROLES]


def matrices(T: int, P: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    """Correlated random gradients (a shared component plus task noise), like real ones."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        common = torch.randn(1, P, generator=g)
        out.append(0.5 * common + torch.randn(T, P, generator=g))
    return out


def timed(fn: Callable[[int], object], repeats: int) -> list[float]:
    fn(0)  # warm-up: compiles solver problems, allocates
    ms = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i + 1)
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def host_solver(name: str, grams: list[np.ndarray]) -> Callable[[int], object] | None:
    """The method's host-side solve from a Gram matrix, or None for other methods."""
    m = mtoframe.create(name)
    ids = np.arange(grams[0].shape[0])
    if name == "nashmtl":
        m.alpha = np.ones(len(ids))
        m.beta = np.ones(len(ids))
        return lambda i: m.solve(grams[i % len(grams)], ids)
    if name in ("cagrad", "fairgrad"):
        m.weights = np.full(len(ids), 1.0 / len(ids))
        if name == "fairgrad":
            m.solved = np.zeros(len(ids), dtype=bool)
        return lambda i: m.coefficients(grams[i % len(grams)], ids)
    return None


def fmt(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=10)
    return f"{statistics.median(ms):8.3f} {q[-1]:8.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--methods", default="", help="comma-separated names (default: every gradient method)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.methods.split(",") if n] or gradient_methods()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); float32; median / p90 ms "
          f"over {args.repeats} calls, {args.variants} matrices in rotation")
    for T, P in SHAPES:
        gs = matrices(T, P, args.variants)
        grams = [(g.double() @ g.double().T).numpy() for g in gs]
        print(f"\n{T}×{P:,}")
        print(f"  {'method':12s} {'median':>8s} {'p90':>8s}  {'host solve only':>17s}  solves/call")
        floor = timed(lambda i: gs[i % len(gs)].sum(0), args.repeats)
        gram = timed(lambda i: gs[i % len(gs)] @ gs[i % len(gs)].T, args.repeats)
        print(f"  {'G.sum(0)':12s} {fmt(floor)}")
        print(f"  {'G Gᵀ':12s} {fmt(gram)}")
        for name in names:
            m = mtoframe.create(name)
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                total = timed(lambda i: mtoframe.aggregate(m, gs[i % len(gs)]), args.repeats)
                host = host_solver(name, grams)
                host_ms = timed(host, args.repeats) if host is not None else None
            solves = getattr(m, "solves", None)
            extra = f"  {fmt(host_ms)}" if host_ms is not None else " " * 19
            per_call = f"  {solves / (args.repeats + 1):.2f}" if solves is not None else ""
            fails = getattr(getattr(m, "failures", None), "count", 0)
            note = f"  ({fails} solver failures)" if fails or rec else ""
            print(f"  {name:12s} {fmt(total)}{extra}{per_call}{note}")


if __name__ == "__main__":
    main()
