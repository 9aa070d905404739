"""The (stack, seed) runs of a comparison: train one, find the finished ones, run the rest in
this process or in ``--workers`` spawned processes."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader

from ..bench.quality import CHECKPOINT_RULE
from ..bench.report import write_json
from ..config import RunConfig, flat
from ..distributed import is_distributed, rank
from ..errors import MtoError, OptionError
from ..metrics import task_directions

RESULT = "result.json"


@attrs.frozen
class RunSpec:
    stack: tuple[str, ...]
    seed: int

    @property
    def label(self) -> str:
        return "+".join(self.stack) or "ew"

    def directory(self, out: Path) -> Path:
        return out / "runs" / self.label / f"seed{self.seed}"


def stack_config(cfg: RunConfig, stack: Sequence[str], seed: int, log_dir: Path | None) -> RunConfig:
    """The config of one run: the stack (``ew`` is the empty stack), the seed, its own
    TensorBoard directory, no checkpoint (a run is the unit of resumption)."""
    return attrs.evolve(cfg, methods=tuple(m for m in stack if m != "ew"), seed=seed,
                        log_dir=None if log_dir is None else str(log_dir / "tb"), checkpoint=None)


def fingerprint(cfg: RunConfig) -> str:
    """What makes runs of two invocations comparable: the config less the keys a comparison
    sets per run (stack, seed, log directory, checkpoint) or that do not change results."""
    keys = {k: v for k, v in flat(cfg).items()
            if k not in ("methods", "seed", "log_dir", "checkpoint", "log_every", "progress")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_splits(cfg: RunConfig) -> tuple[Any, list[Any], Any, Any, Any]:
    """``(model, tasks, train, val, test or None)``; built-in data sets have no test split."""
    from ..commands.train import build_run

    if cfg.data.factory is not None:
        from ..userrun import build_user_run

        run = build_user_run(cfg)
        return run.model, run.tasks, run.train, run.val, run.test
    model, tasks, train, val = build_run(cfg)
    if isinstance(train, dict):
        raise OptionError(f"data {cfg.data.name!r} has one input per task (multi-input); mtoframe compare needs "
                          "one input per item, as a [data] factory or scenes / manytask / nyuv2 / cityscapes give")
    return model, tasks, train, val, None


def train_one(cfg: RunConfig, spec: RunSpec, out: Path, *, threads: int | None) -> dict[str, Any]:
    """Train ``spec`` on ``cfg`` and evaluate the last epoch's model on the held-out split."""
    from ..commands.train import _OnDevice, make_optimizer, resolve_methods
    from ..trainer import Trainer

    if threads is not None:
        from ..bench.threads import limit_threads

        limit_threads(threads)
    run_dir = spec.directory(out)
    run_cfg = stack_config(cfg, spec.stack, spec.seed, run_dir)
    if rank() == 0 and (run_dir / "tb").exists():  # events of an interrupted attempt would mix with this one's
        shutil.rmtree(run_dir / "tb")
    device = torch.device(cfg.device)
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    model, tasks, train, val, test = build_splits(run_cfg)
    model.to(device)
    # Methods are built after the model, so one that draws from the global RNG when built (RLW's
    # default seed) leaves the initial weights as EW's, and from a reseeded RNG, so a run is the
    # same in any process (--workers) and in any position among the runs.
    torch.manual_seed(spec.seed)
    methods = resolve_methods(run_cfg)
    order = torch.Generator().manual_seed(spec.seed)
    bs = cfg.batch_size
    train_dl = DataLoader(train, batch_size=bs, shuffle=True, generator=order, drop_last=len(train) > bs,
                          num_workers=cfg.data.workers)
    held, split = (test, "test") if test is not None else (val, "val")
    with Trainer(model, tasks, methods, optimizer=make_optimizer(run_cfg, model.parameters()),
                 log_dir=run_cfg.log_dir, log_every=cfg.log_every, nonfinite=cfg.nonfinite,  # type: ignore[arg-type]
                 progress=False, hparams=flat(run_cfg)) as trainer:
        trainer.fit(_OnDevice(train_dl, device), epochs=cfg.epochs,
                    val=_OnDevice(DataLoader(val, batch_size=bs), device))
        metrics = trainer.evaluate(_OnDevice(DataLoader(held, batch_size=bs), device))
        history = trainer.history
    return {"stack": spec.label, "methods": list(spec.stack), "seed": spec.seed, "split": split,
            "checkpoint_rule": CHECKPOINT_RULE, "epochs": cfg.epochs, "metrics": metrics,
            "directions": task_directions(tasks),
            "val_last_epoch": history[-1].get("val"), "train_loss_last_epoch": history[-1]["train_loss"],
            "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(), "fingerprint": fingerprint(cfg)}


def finished(out: Path, specs: Sequence[RunSpec], fp: str) -> dict[RunSpec, dict[str, Any]]:
    """Results already written for ``specs``; one written for another config is an error (mixing
    them would pair runs that are not comparable)."""
    done: dict[RunSpec, dict[str, Any]] = {}
    for spec in specs:
        path = spec.directory(out) / RESULT
        if not path.exists():
            continue
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MtoError(f"cannot read the finished run {path}: {exc}; delete it to train that run again") from exc
        if res.get("fingerprint") != fp:
            raise OptionError(f"{out} holds runs of another config or budget ({path} has fingerprint "
                              f"{res.get('fingerprint')}, this comparison {fp}); give another --out, or delete "
                              f"{out / 'runs'} to start over")
        done[spec] = res
    return done


def _train_in_worker(cfg: RunConfig, spec: RunSpec, out: str, threads: int | None) -> dict[str, Any]:
    return train_one(cfg, spec, Path(out), threads=threads)


def execute(cfg: RunConfig, specs: Sequence[RunSpec], out: Path, *, workers: int = 1, threads: int | None = None,
            say: Callable[[str], None] = print) -> dict[RunSpec, dict[str, Any]]:
    """Train every spec without a result yet and return all results. Each result is written as
    soon as its run ends, so an interruption loses only the runs in flight."""
    fp = fingerprint(cfg)
    results = finished(out, specs, fp)
    todo = [s for s in specs if s not in results]
    if results:
        say(f"{len(results)} of {len(specs)} runs already finished in {out / 'runs'}: not redone")
    if workers > 1 and is_distributed():
        raise OptionError("--workers > 1 cannot be combined with torchrun: under torch.distributed every run "
                          "is trained by all ranks together, one run at a time")

    def record(spec: RunSpec, res: dict[str, Any]) -> None:
        results[spec] = res
        if rank() == 0:
            write_json(spec.directory(out) / RESULT, res)
        say(f"  [{len(results)}/{len(specs)}] {spec.label} seed {spec.seed}: {_short(res)} ({res['seconds']:.1f} s)")

    if workers <= 1 or len(todo) <= 1:
        for spec in todo:
            record(spec, train_one(cfg, spec, out, threads=threads))
            if is_distributed():
                torch.distributed.barrier()  # rank 0 has written the result before anyone moves on
        return results
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_train_in_worker, cfg, spec, str(out), threads): spec for spec in todo}
        try:
            for fut in cf.as_completed(futures):
                record(futures[fut], fut.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


def _short(res: dict[str, Any]) -> str:
    return "; ".join(f"{t} " + " ".join(f"{k}={v:.4g}" for k, v in ms.items()) for t, ms in res["metrics"].items())
