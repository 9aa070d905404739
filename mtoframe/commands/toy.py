"""``mtoframe toy``: the two-task toy of METHODS.md under protocols (a) and (b) for every
installed method that applies; trajectories on the loss landscape with the Pareto set (PNG) and
endpoints (JSON)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("toy", help="the two-task toy: trajectories and endpoints of the installed methods",
                       description=__doc__)
    p.add_argument("--out", type=Path, default=Path("toy-results"), help="output directory (default: %(default)s)")
    p.add_argument("--protocol", choices=("a", "b", "both"), default="both")
    p.add_argument("--methods", help="comma-separated methods (default: every installed method the toy applies to)")
    p.add_argument("--steps", type=_positive,
                   help="override the step budget of the protocols (per-method budgets scale along)")
    p.add_argument("--quick", action="store_true", help="a tenth of the protocols' steps")
    p.add_argument("--seed", type=int, default=0, help="seed of random methods (RLW)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of steps, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of steps, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..api import available
    from ..bench import report
    from ..bench.toy import PROTOCOLS, plan, plot_protocol, run_protocol
    from ..errors import OptionError

    names = [n.strip() for n in args.methods.split(",")] if args.methods else available()
    run_names, skipped = plan(names, generic=bool(args.methods))
    if args.methods and skipped:
        raise OptionError("the toy cannot run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    protocols = ["a", "b"] if args.protocol == "both" else [args.protocol]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"skipped": skipped, "front_criterion": "x1 in [-7.05, 7.05] and |x2 + 8.3552| < 0.25",
                               "protocols": {}}
    for key in protocols:
        proto = PROTOCOLS[key]
        steps = args.steps if args.steps is not None else (proto.steps // 10 if args.quick else None)
        print(f"protocol {proto.title}: {', '.join(run_names)}" + (f" ({steps} steps)" if steps else ""), flush=True)
        t0 = time.perf_counter()
        res = run_protocol(proto, run_names, steps=steps, seed=args.seed)
        res["wall_seconds"] = time.perf_counter() - t0
        rows = []
        for name, r in res["methods"].items():
            ends = " ".join(f"({a:+.2f},{b:+.2f})" for a, b in r["endpoints"])
            rows.append([name, f"{r['reached']}/{len(r['endpoints'])}", r["steps"], r["implementation"], ends])
        header = ["method", "on front", "steps", "implementation", "endpoints (x1, x2)"]
        print(report.table(rows, header, align="llrll"))
        png = plot_protocol(res, out / f"toy_{key}.png")
        print(f"  {res['wall_seconds']:.1f} s" + (f"; wrote {out / f'toy_{key}.png'}" if png else ""), flush=True)
        results["protocols"][key] = res
    for name, why in skipped.items():
        print(f"not run: {name}: {why}")
    fields = ("endpoints", "losses", "on_front", "reached", "steps", "implementation", "options")
    endpoints = {k: {n: {f: r[f] for f in fields} for n, r in res["methods"].items()}
                 for k, res in results["protocols"].items()}
    report.write_json(out / "endpoints.json", {"skipped": skipped, "front_criterion": results["front_criterion"],
                                               "protocols": endpoints})
    report.write_json(out / "trajectories.json", results)
    print(f"wrote {out / 'endpoints.json'} and {out / 'trajectories.json'}")
    return 0
