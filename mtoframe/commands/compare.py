"""``mtoframe compare CONFIG.toml --methods ew,famo,nashmtl,repmtl+nashmtl --seeds 5``: train every
stack on the config's data and model with the same seeds, and report which (if any) beats EW
within its 95% interval, at what step time and memory (see :mod:`mtoframe.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs

from ..bench.report import writable_dir
from ..bench.workloads import parse_stacks
from ..compare.driver import CompareOptions, run_compare
from ..config import load_config
from ..errors import OptionError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="which method helps on my data and model: stacks vs EW, paired over seeds",
                       description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("config", help="TOML run configuration (mtoframe/config.py; its 'methods' are ignored)")
    p.add_argument("--methods", required=True, metavar="STACKS",
                   help="comma-separated stacks, methods of a stack joined by '+': ew,famo,repmtl+nashmtl "
                        "(EW is always trained: it is the reference)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per stack, from the config's seed on (default 5)")
    p.add_argument("--budget", type=int, metavar="EPOCHS", help="epochs per run (default: the config's epochs)")
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once in separate processes (default 1); the numbers do not depend on it")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads per run (default: torch's, divided among the workers)")
    p.add_argument("--timing-rounds", type=int, default=20, metavar="N",
                   help="interleaved timing rounds for the step-time ratios (default 20; 0: no timing)")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/compare-<config name>); "
                                                 "finished runs there are not redone")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one dotted config key (repeatable)")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.budget is not None:
        if args.budget < 1:
            raise OptionError(f"--budget must be a positive number of epochs, got {args.budget}")
        cfg = attrs.evolve(cfg, epochs=args.budget)
    if args.threads is not None and args.threads < 1:
        raise OptionError(f"--threads must be >= 1, got {args.threads}")
    stacks = tuple(tuple(s) for s in parse_stacks(args.methods))
    if not stacks:
        raise OptionError(f"--methods names no stack: {args.methods!r}")
    out = writable_dir(Path(args.out or f"runs/compare-{Path(args.config).stem}"))
    opts = CompareOptions(stacks=stacks, seeds=args.seeds, workers=args.workers, threads=args.threads,
                          timing_rounds=args.timing_rounds)
    run_compare(cfg, opts, out, config_name=Path(args.config).name)
    return 0
