"""``mtoframe bench``: which method, at what cost, on this machine.

Default: per-step time and peak memory of every installed method and of Rep-MTL stacks on the
embedded ``scenes`` data (``--tasks T``: the ``manytask`` regression). ``--quality``: train
single-task baselines and every stack for a fixed budget over several seeds and compare
``Δp_task`` with paired 95% intervals against EW (``--data scenes`` or ``multimnist``).
``--compare OLD NEW``: per-stack change between two timing runs' ``results.json``, with verdicts
(``--fail-on-regression PCT`` for CI).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: (full, --quick) sizes of the timing run
SPEED_SIZES = {
    # full: the README's main job, about 5 minutes on 2 CPU cores for every method and stack (one
    # warm step per timed step)
    "size": (64, 32), "batch": (8, 8), "width": (16, 16), "rounds": (30, 20), "warmup": (3, 3),
    "manytask_batch": (256, 64),
}
#: (full, --quick) budgets of the quality run per dataset, measured on 2 loaded CPU cores (docs/BENCHMARKS.md)
QUALITY_SIZES = {
    "scenes": {"size": (32, 32), "batch": (32, 32), "width": (16, 16), "seeds": (3, 3), "epochs": (6, 2),
               "n_train": (512, 256), "n_val": (128, 64), "n_test": (256, 128)},
    "multimnist": {"batch": (128, 128), "seeds": (3, 3), "epochs": (8, 4),
                   "n_train": (4000, 3000), "n_val": (1000, 500), "n_test": (2000, 1000)},
}


def quality_sizes(data: str, *, quick: bool) -> dict[str, int]:
    """The quality run's budget for ``data`` (full or ``--quick``)."""
    return {k: v[1 if quick else 0] for k, v in QUALITY_SIZES[data].items()}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="head-to-head timing (default) or quality (--quality) of the installed methods",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="small model and budget (timing < 3 min, quality < 10 min on 2 CPU cores)")
    p.add_argument("--quality", action="store_true", help="train and compare quality instead of timing")
    p.add_argument("--methods", help="stacks to run, comma separated, '+' joins a stack: 'ew,cagrad,repmtl+nashmtl' "
                   "(default: every installed method alone and the Rep-MTL stacks whose methods are installed)")
    p.add_argument("--tasks", type=_task_counts, help="time on the manytask regression with this many tasks (2..40); "
                   "several, comma separated (e.g. 2,3,5,10,20,40), time each and fit time = a + b*T per stack")
    p.add_argument("--peers", default="", help="comma-separated peer libraries to time beside mtoframe: torchjd")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    for key in ("size", "batch", "width", "rounds", "warmup"):
        p.add_argument(f"--{key}", type=int, help=f"override ({'/'.join(map(str, SPEED_SIZES[key]))} full/quick)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory (measured in the last warm-up round)")
    p.add_argument("--warm-steps", type=int, default=1,
                   help="untimed steps of a stack right before each timed one, so that it is timed with its own "
                   "code and data in cache, as in a training loop (default: %(default)s; 0: single interleaved steps)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 for timing on CPU, steadier and "
                   "far faster on a loaded machine; torch's default for --quality)")
    q = p.add_argument_group("quality")
    q.add_argument("--data", choices=("scenes", "multimnist"), default="scenes",
                   help="quality dataset: the embedded scenes or MultiMNIST from real digits "
                   "(needs pip install 'mtoframe[data]'; default: %(default)s)")
    q.add_argument("--seeds", type=int, help="number of seeds (3 full and quick)")
    q.add_argument("--epochs", type=int, help="epochs per run (scenes 6/2, multimnist 8/4 full/quick)")
    q.add_argument("--n-train", type=int, help="training images or pairs (scenes 512/256, multimnist 4000/3000)")
    q.add_argument("--n-val", type=int, help="validation images or pairs (scenes 128/64, multimnist 1000/500)")
    q.add_argument("--n-test", type=int, help="test images or pairs (scenes 256/128, multimnist 2000/1000)")
    q.add_argument("--lr", type=float, help="Adam learning rate (timing 1e-4, quality 1e-3)")
    p.add_argument("--cache-dir",
                   help="where the generated scenes are cached (default: MTOFRAME_CACHE or ~/.cache/mtoframe)")
    c = p.add_argument_group("compare two timing runs")
    c.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                   help="compare two results.json files: per-stack change of the ratio to EW, with verdicts")
    c.add_argument("--fail-on-regression", type=float, metavar="PCT",
                   help="with --compare: exit 1 when a stack is slower beyond noise by more than PCT percent")
    return p


def _task_counts(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--tasks takes task counts, comma separated (e.g. 10 or 2,3,5,10), got {text!r}") from None
    if not counts:
        raise argparse.ArgumentTypeError("--tasks needs at least one task count")
    return counts


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _pick(args: argparse.Namespace, key: str, table: dict[str, tuple[int, int]]) -> int:
    v = getattr(args, key, None)
    return v if v is not None else table[key][1 if args.quick else 0]


def _stacks(args: argparse.Namespace) -> tuple[list[list[str]], bool]:
    from ..api import available
    from ..bench.workloads import default_stacks, parse_stacks

    if args.methods:
        return parse_stacks(args.methods), True
    return default_stacks(available()), False


def run(args: argparse.Namespace) -> int:
    import os
    import warnings

    import torch

    from ..bench.report import writable_dir
    from ..errors import OptionError

    if args.fail_on_regression is not None and args.compare is None:
        raise OptionError("--fail-on-regression needs --compare OLD NEW")
    if args.compare is not None:
        from ..bench.compare import run_compare

        return run_compare(*args.compare, fail_on_regression=args.fail_on_regression, stream=sys.stdout)
    if args.threads is not None and args.threads < 1:
        raise OptionError(f"--threads must be >= 1, got {args.threads}")
    if args.threads is None and not args.quality and args.device == "cpu":
        # spinning OpenMP workers of two threads make a step up to ten times slower when another
        # process holds a core; the paired ratios are what the timing run reports
        args.threads = 1
    if args.threads is not None:
        from ..bench.threads import limit_threads

        limit_threads(args.threads)
    cores = os.cpu_count() or 1
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > cores:
        hint = "; --threads 1 avoids intra-op thread contention" if torch.get_num_threads() > 1 else ""
        warnings.warn(f"load average {os.getloadavg()[0]:.1f} exceeds the {cores} CPU cores: timings are noisy "
                      f"and slower{hint}", stacklevel=1)

    if args.quality and args.tasks is not None:
        raise OptionError("--quality runs on --data scenes or multimnist; --tasks (manytask) is for timing only")
    bad = [t for t in args.tasks or [] if not 2 <= t <= 40]
    if bad:
        raise OptionError(f"--tasks must be in 2..40, got {', '.join(map(str, bad))}")
    if args.tasks is not None and len(set(args.tasks)) != len(args.tasks):
        raise OptionError(f"--tasks lists a task count twice: {args.tasks}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if peers and args.quality:
        raise OptionError("--peers applies to timing only")
    if args.rounds is not None and args.rounds < 2:
        raise OptionError(f"--rounds must be >= 2 (an interval over rounds needs two), got {args.rounds}")
    if args.warm_steps < 0:
        raise OptionError(f"--warm-steps must be >= 0 (0: single interleaved steps), got {args.warm_steps}")
    writable_dir(args.out)  # before any work: a run must not fail at its end for want of a directory
    return run_quality(args) if args.quality else run_timing(args, peers)


def run_timing(args: argparse.Namespace, peers: list[str]) -> int:
    if peers:
        from ..bench.peers import require_torchjd

        if "torchjd" in peers:
            require_torchjd()  # fail before any work when it is missing
    if args.tasks is None or len(args.tasks) == 1:
        return _run_one_timing(args, peers, args.tasks[0] if args.tasks else None, args.out)[0]
    from ..bench.report import writable_dir
    from ..bench.sweep import write_sweep_report

    runs, code = {}, 0
    for tasks in sorted(args.tasks):
        rc, runs[tasks] = _run_one_timing(args, peers, tasks, writable_dir(args.out / f"T{tasks}"))
        code = max(code, rc)
    write_sweep_report(runs, args.out, stream=sys.stdout)
    return code


def _run_one_timing(args: argparse.Namespace, peers: list[str], tasks: int | None,
                    out: Path) -> tuple[int, list[dict[str, Any]]]:
    from ..bench.speed import SpeedConfig, run_speed
    from ..bench.speed_report import write_speed_report
    from ..bench.workloads import manytask_workload, scenes_workload

    stacks, strict = _stacks(args)
    if tasks is not None:
        batch = args.batch if args.batch is not None else SPEED_SIZES["manytask_batch"][1 if args.quick else 0]
        workload = manytask_workload(tasks=tasks, batch=batch, seed=args.seed)
    else:
        workload = scenes_workload(size=_pick(args, "size", SPEED_SIZES), batch=_pick(args, "batch", SPEED_SIZES),
                                   width=_pick(args, "width", SPEED_SIZES), seed=args.seed, cache_dir=args.cache_dir)
    workload.to(_device(args.device))
    cfg = SpeedConfig(rounds=_pick(args, "rounds", SPEED_SIZES), warmup=_pick(args, "warmup", SPEED_SIZES),
                      lr=args.lr if args.lr is not None else 1e-4, seed=args.seed, memory=not args.no_memory,
                      device=args.device, warm_steps=args.warm_steps)
    info = ", ".join(f"{k}={v}" for k, v in workload.info.items())
    print(f"mtoframe bench: {workload.name} ({info}) on {args.device}, {_threads()} thread(s), Adam lr {cfg.lr}",
          flush=True)
    records = run_speed(workload, stacks, cfg, peers=peers, strict=strict,
                        progress=lambda s: print(f"  {s}", flush=True))
    write_speed_report(records, out, title=f"mtoframe bench on {workload.name} ({args.device})",
                       memory=cfg.memory, stream=sys.stdout)
    return (1 if strict and any(r["error"] is not None for r in records) else 0), records


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _device(name: str) -> Any:
    import torch

    return torch.device(name)


def run_quality(args: argparse.Namespace) -> int:
    from ..bench.quality import QualityConfig, run_quality_cli

    stacks, strict = _stacks(args)
    sizes = quality_sizes(args.data, quick=args.quick)
    sizes.update({k: getattr(args, k) for k in sizes if getattr(args, k, None) is not None})
    cfg = QualityConfig(data=args.data, lr=args.lr if args.lr is not None else 1e-3, device=args.device,
                        cache_dir=args.cache_dir, seed=args.seed, **sizes)
    return run_quality_cli(stacks, cfg, out=args.out, strict=strict, stream=sys.stdout)
