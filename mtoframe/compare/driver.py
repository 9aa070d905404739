"""One comparison from start to files: check the stacks, train the missing runs, time the stacks,
summarise, write."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from ..bench import report as bench_report
from ..bench.quality import CHECKPOINT_RULE
from ..config import RunConfig
from ..distributed import is_distributed, rank
from ..errors import OptionError
from . import cost, report, runs, summary

TIMING = "timing.json"


@attrs.frozen(kw_only=True)
class CompareOptions:
    stacks: tuple[tuple[str, ...], ...]
    seeds: int = 5
    workers: int = 1
    #: intra-op threads of each run; None: torch's default (workers > 1: cores ÷ workers)
    threads: int | None = None
    timing_rounds: int = 20
    timing_warmup: int = 3


def check_stacks(cfg: RunConfig, stacks: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """EW first (every comparison is paired with it), each stack once, every stack resolved by
    the stacking rule before anything is trained (a typo fails now, not after an hour)."""
    from ..commands.train import resolve_methods

    out: list[tuple[str, ...]] = [("ew",)]
    for s in stacks:
        s = tuple(s)
        if not s:
            raise OptionError("--methods has an empty stack (two commas or a trailing '+')")
        if "ew" in s and len(s) > 1:
            raise OptionError(f"'ew' is the empty stack and cannot be combined: {'+'.join(s)}")
        if s not in out:
            out.append(s)
    for s in out:
        resolve_methods(runs.stack_config(cfg, s, cfg.seed, None))
    return out


def run_compare(cfg: RunConfig, opts: CompareOptions, out: Path, *, config_name: str,
                say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Train, time and summarise; returns the result written to ``compare.json`` (``None`` on
    ranks other than 0 under torch.distributed, which train but do not write)."""
    if opts.seeds < 1:
        raise OptionError(f"--seeds must be >= 1, got {opts.seeds}")
    if opts.workers < 1:
        raise OptionError(f"--workers must be >= 1, got {opts.workers}")
    if opts.timing_rounds == 1 or opts.timing_rounds < 0:
        raise OptionError(f"--timing-rounds must be 0 (no timing) or >= 2, got {opts.timing_rounds}")
    stacks = check_stacks(cfg, opts.stacks)
    seeds = [cfg.seed + i for i in range(opts.seeds)]
    specs = [runs.RunSpec(s, seed) for seed in seeds for s in stacks]  # seed-major: early stops leave pairs
    t0 = time.perf_counter()
    threads = opts.threads
    if threads is None and opts.workers > 1:
        threads = max(1, torch.get_num_threads() // opts.workers)
    say(f"mtoframe compare {config_name}: stacks {', '.join(s.label for s in specs[:len(stacks)])}; seeds "
        f"{seeds[0]}..{seeds[-1]}; {cfg.epochs} epochs per run; {len(specs)} runs, {opts.workers} worker(s)")
    results = runs.execute(cfg, specs, out, workers=opts.workers, threads=threads, say=say)
    timing = _timing(cfg, stacks, opts, out, say)
    if rank() != 0:
        return None
    by_stack: dict[str, dict[int, dict[str, Any]]] = {}
    for spec, res in results.items():
        by_stack.setdefault(spec.label, {})[spec.seed] = res
    directions = results[specs[0]]["directions"]
    quality, excluded = summary.quality_vs_ew(by_stack, directions)
    labels = [runs.RunSpec(s, 0).label for s in stacks]
    ew_mean = {t: {m: sum(by_stack["ew"][s]["metrics"][t][m] for s in seeds) / len(seeds) for m in ms}
               for t, ms in directions.items()}
    verdicts = [summary.stack_sentence(lab, quality[lab], timing.get(lab)) for lab in labels if lab != "ew"]
    per_metric = [summary.metric_words(lab, quality[lab]) for lab in labels if lab != "ew"]
    result: dict[str, Any] = {
        "config": config_name,
        "stacks": [{"stack": lab, "timing": timing.get(lab),
                    **({"ew_metrics": ew_mean} if lab == "ew" else {"quality": quality[lab]})} for lab in labels],
        "conclusion": summary.conclusion(quality, len(seeds)),
        "verdicts": verdicts,
        "metric_verdicts": per_metric,
        "seeds": seeds,
        "epochs": cfg.epochs,
        "split": next(iter(results.values()))["split"],
        "checkpoint_rule": CHECKPOINT_RULE,
        "directions": directions,
        "excluded_from_delta_p": excluded,
        "timing_rounds": opts.timing_rounds,
        "timing_noise_ew_vs_itself": (timing.get("ew#2") or {}).get("ratio_to_ew_ci"),
        "runs": {lab: {str(s): r for s, r in sorted(per.items())} for lab, per in by_stack.items()},
        "wall_seconds_this_invocation": time.perf_counter() - t0,
    }
    bench_report.write_json(out / "compare.json", result)
    report.write_markdown(out / "compare.md", result)
    png = report.picture(out / "compare.png", result)
    report.tensorboard_summary(out / "tb-summary", result)
    say("")
    say(result["conclusion"])
    for v in verdicts + per_metric:
        say(f"  {v}")
    say(f"wrote {out / 'compare.json'}, {out / 'compare.md'}" + (f", {out / 'compare.png'}" if png else "")
        + f"; TensorBoard runs under {out / 'runs'} ({time.perf_counter() - t0:.0f} s)")
    return result


def _timing(cfg: RunConfig, stacks: Sequence[Sequence[str]], opts: CompareOptions, out: Path,
            say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Timing after training, with no run in flight (it would share the cores), once:
    ``timing.json`` is kept like a finished run."""
    if opts.timing_rounds == 0:
        return {}
    path = out / TIMING
    key = {"fingerprint": runs.fingerprint(cfg), "stacks": ["+".join(s) for s in stacks],
           "rounds": opts.timing_rounds, "warmup": opts.timing_warmup, "threads": torch.get_num_threads()}
    if path.exists() and (saved := json.loads(path.read_text(encoding="utf-8"))).get("key") == key:
        say(f"step times already measured in {path}: not redone")
        records: dict[str, dict[str, Any]] = saved["records"]
        return records
    # Under torch.distributed every rank times (a step's collectives need them all, in the same
    # seeded round order); what is timed is then the distributed step. Rank 0 writes.
    say(f"timing the stacks on the config's model and first batch ({opts.timing_rounds} rounds)")
    timing = cost.measure(cfg, stacks, rounds=opts.timing_rounds, warmup=opts.timing_warmup, say=say)
    if rank() == 0:
        bench_report.write_json(path, {"key": key, "records": timing})
    if is_distributed():
        torch.distributed.barrier()
    return timing
