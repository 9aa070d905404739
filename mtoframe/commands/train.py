"""``mtoframe train CONFIG.toml [--set key=value ...] [--resume]``: train one stack from a TOML
config (see :mod:`mtoframe.config`), evaluating and printing metrics after every epoch."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import RunConfig, flat, load_config
from ..errors import OptionError
from ..outputs import check_outputs, write_output
from ..resume import apply_changes, checkpoint_errors, config_changes


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a stack of methods from a TOML config",
                       description=(__doc__ or "").split("\n\n")[0],
                       epilog="Generated data (data name 'scenes') is cached under $MTOFRAME_CACHE, by default "
                              "~/.cache/mtoframe, unless the config's [data] cache_dir says where.")
    p.add_argument("config", help="TOML run configuration (see mtoframe/config.py for the keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one dotted key, e.g. --set optimizer.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the config's checkpoint file when it exists")
    p.add_argument("--history", metavar="PATH", help="write the per-epoch history as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume, echo=print, config_path=args.config, history_path=args.history)
    return 0


def resolve_methods(cfg: RunConfig) -> list[Any]:
    """The config's stack as configured methods, checked by the stacking rule: a mistyped name,
    a bad option or an impossible stack fails here, before any data is generated or loaded."""
    from ..api import as_method
    from ..checks import check_stack_order
    from ..method import check_generic_stack

    methods = [as_method(m) for m in cfg.methods]
    check_stack_order(methods)
    check_generic_stack(methods)
    return methods


def build_run(cfg: RunConfig) -> tuple[Any, list[Any], Any, Any]:
    """``(model, tasks, train, val)`` of a config: datasets, or ``{task: dataset}`` for
    multi-input data (Office)."""
    from ..models.hps import build_manytask_model, build_scene_model, manytask_tasks, scene_tasks

    d, m = cfg.data, cfg.model
    train_ds: Dataset[Any]
    val_ds: Dataset[Any]
    if d.factory is not None:
        from ..userrun import build_user_run

        run = build_user_run(cfg)
        return run.model, run.tasks, run.train, run.val
    if d.name == "manytask":
        from ..data.manytask import manytask_datasets

        if m.name not in ("auto", "mlp"):
            raise OptionError(f"[model] name = {m.name!r} does not fit data 'manytask'; allowed: auto, mlp")
        train_ds, val_ds = manytask_datasets(tasks=d.num_tasks, n_train=d.n_train, n_val=d.n_val,
                                             d_in=d.d_in, correlation=d.correlation, seed=cfg.seed)
        names = [f"t{i}" for i in range(d.num_tasks)]
        _check_subset(cfg, names)
        keep = cfg.task_names() or names
        model = build_manytask_model(tasks=d.num_tasks, d_in=d.d_in, d_rep=m.d_rep)
        model.heads = torch.nn.ModuleDict({k: v for k, v in model.heads.items() if k in keep})
        return (model, [t for t in manytask_tasks(d.num_tasks) if t.name in keep],
                _Subset(train_ds, keep), _Subset(val_ds, keep))

    if d.name in ("office31", "officehome"):
        return _office_run(cfg)

    from .. import data as datamod

    available: tuple[str, ...]
    if d.name == "scenes":
        available, classes = ("segmentation", "depth", "normal"), d.num_classes or datamod.NUM_CLASSES
    elif d.name == "nyuv2":
        available, classes = ("segmentation", "depth", "normal"), d.num_classes or 13
    else:
        suffix = d.label_dir.rpartition("_")[2]  # label_7 -> 7 classes
        available, classes = ("segmentation", "depth"), d.num_classes or (int(suffix) if suffix.isdigit() else 7)
    _check_subset(cfg, available)
    tasks = cfg.task_names() or available
    if d.name == "scenes":
        train_ds, val_ds = datamod.scenes_datasets(n_train=d.n_train, n_val=d.n_val, size=d.size, seed=cfg.seed,
                                                   cache_dir=d.cache_dir)
    elif d.name == "nyuv2":
        assert d.path is not None  # DataConfig requires it for nyuv2 and cityscapes
        train_ds, val_ds = datamod.nyuv2_datasets(d.path, tasks=tasks)
    else:
        assert d.path is not None
        train_ds, val_ds = datamod.cityscapes_datasets(d.path, label_dir=d.label_dir, tasks=tasks)
    if m.name in ("auto", "hps"):
        model = build_scene_model(num_classes=classes, tasks=tasks, width=m.width)
    elif m.name == "resnet50":
        from ..models.resnet import build_resnet50_aspp

        model = build_resnet50_aspp(num_classes=classes, tasks=tasks)
    else:
        raise OptionError(f"[model] name = {m.name!r} does not fit data {d.name!r}; allowed: auto, hps, resnet50")
    return model, scene_tasks(classes, tasks), _Subset(train_ds, tasks), _Subset(val_ds, tasks)


def _office_run(cfg: RunConfig) -> tuple[Any, list[Any], Mapping[str, Dataset[Any]], Mapping[str, Dataset[Any]]]:
    from ..data.office import OFFICE31, OFFICEHOME, office_datasets
    from ..metrics import Accuracy
    from ..model import Task
    from ..models.resnet import build_resnet18_office

    d = cfg.data
    if cfg.model.name not in ("auto", "resnet18"):
        raise OptionError(f"[model] name = {cfg.model.name!r} does not fit data {d.name!r}; allowed: auto, resnet18")
    domains = d.domains or (OFFICE31 if d.name == "office31" else OFFICEHOME)
    _check_subset(cfg, domains)
    domains = cfg.task_names() or domains
    lists = d.list_dir or d.path
    assert d.path is not None and lists is not None
    train_ds = office_datasets(d.path, lists, domains=domains, split="train", size=d.image_size)
    val_ds = office_datasets(d.path, lists, domains=domains, split=d.val_split, size=d.image_size)
    classes = d.num_classes or (31 if d.name == "office31" else 65)
    model = build_resnet18_office(num_classes=classes, tasks=domains)
    tasks = [Task(t, loss=torch.nn.functional.cross_entropy, metrics=[Accuracy()]) for t in domains]
    return model, tasks, train_ds, val_ds


class _Subset(Dataset[Any]):
    """Drops targets of tasks the run does not train (preloaded datasets keep them all)."""

    def __init__(self, ds: Dataset[Any], tasks: Iterable[str]) -> None:
        self.ds, self.tasks = ds, tuple(tasks)

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        x, y = self.ds[i]
        return x, {t: y[t] for t in self.tasks}


def _check_subset(cfg: RunConfig, available: Iterable[str]) -> None:
    available = list(available)
    if cfg.tasks is not None:
        bad = [t for t in cfg.tasks if t not in available]
        if bad:
            raise OptionError(f"option 'tasks' names {bad}, which data {cfg.data.name!r} does not have; "
                              f"allowed: {available}")
        if len(set(cfg.tasks)) != len(cfg.tasks):
            raise OptionError(f"option 'tasks' repeats a task: {list(cfg.tasks)}")


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


class _OnDevice:
    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[Any]:
        return (_to(b, self.device) for b in self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def make_optimizer(cfg: RunConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)


def train(cfg: RunConfig, *, resume: bool = False, echo: Any = None, config_path: str | None = None,
          history_path: str | None = None) -> list[dict[str, Any]]:
    """Train as the config says; returns the trainer's history (one dict per epoch), also
    written to ``history_path`` when given. Every output path is checked before data is built."""
    from ..trainer import Trainer

    try:
        device = torch.device(cfg.device)
    except RuntimeError as exc:
        raise OptionError(f"option 'device' of the run config is not a torch device: {cfg.device!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"option 'device' = {cfg.device!r}, but this torch {torch.__version__} has no usable CUDA "
                          "device; use device = \"cpu\" or a CUDA build of torch")
    if resume and cfg.checkpoint is None:
        raise OptionError("--resume needs checkpoint = \"PATH\" in the config")
    resolve_methods(cfg)  # fail fast; the run's methods are built after the seed, as the model is
    outputs = check_outputs({"config file": config_path}, {
        "checkpoint": cfg.checkpoint,
        "history file (<log_dir>/history.json)": Path(cfg.log_dir, "history.json") if cfg.log_dir else None,
        "--history file": history_path,
    })
    saved = _resume_state(cfg, device) if resume else None
    torch.manual_seed(cfg.seed)
    model, tasks, train_ds, val_ds = build_run(cfg)
    model.to(device)
    # The loader shuffles from the global RNG, which checkpoints restore: resume stays identical.
    workers = cfg.data.workers
    train_dl: Any
    val_dl: Any
    if isinstance(train_ds, dict):  # multi-input: each task has its own images
        from ..data.office import MultiInputLoader

        train_dl = MultiInputLoader(train_ds, batch_size=cfg.batch_size, num_workers=workers)
        val_dl = MultiInputLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, cycle=False, num_workers=workers)
    else:
        train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True,
                              drop_last=len(train_ds) > cfg.batch_size, num_workers=workers)
        val_dl = DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=workers)
    trainer = Trainer(model, tasks, list(cfg.methods), optimizer=make_optimizer(cfg, model.parameters()),
                      log_dir=cfg.log_dir, log_every=cfg.log_every, nonfinite=cfg.nonfinite,  # type: ignore[arg-type]
                      progress=cfg.progress, hparams=flat(cfg))
    if saved is not None:
        state, changes = saved
        with checkpoint_errors(cfg.checkpoint):  # type: ignore[arg-type]
            trainer.load_state_dict(state)
        apply_changes(changes, trainer.optimizer, echo)
        if echo:
            echo(f"resumed from {cfg.checkpoint} at epoch {trainer.epoch}")
    stack = "+".join(m.name for m in trainer.stack) or "ew"
    if echo:
        echo(f"training {stack} on {cfg.data.factory or cfg.data.name} "
             f"({_size(train_ds)} train / {_size(val_ds)} val), tasks {[t.name for t in tasks]}, {cfg.epochs} epochs")
    with trainer:
        while trainer.epoch < cfg.epochs:
            t0 = time.perf_counter()
            trainer.fit(_OnDevice(train_dl, device), epochs=1, val=_OnDevice(val_dl, device))
            if cfg.checkpoint is not None:
                trainer.save_checkpoint(cfg.checkpoint, meta={"config": flat(cfg)})
            if echo:
                echo(format_epoch(trainer.history[-1], cfg.epochs, time.perf_counter() - t0))
    for what, path in outputs.items():
        if what != "checkpoint":
            write_output(path, json.dumps(trainer.history, indent=2), what)
    return trainer.history


def _resume_state(cfg: RunConfig, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The checkpoint to resume from (``None`` when there is none yet) and the config changes to
    apply; a change that cannot be applied is refused before any data is built."""
    from ..checkpoint import load

    assert cfg.checkpoint is not None
    if not Path(cfg.checkpoint).exists():
        return None
    state = load(cfg.checkpoint, map_location=device)
    meta = state.get("meta")
    saved = meta.get("config") if isinstance(meta, dict) else None
    return state, config_changes(saved, flat(cfg), cfg.checkpoint)


def _size(ds: Any) -> int:
    return sum(len(v) for v in ds.values()) if isinstance(ds, dict) else len(ds)


def format_epoch(stats: dict[str, Any], epochs: int, seconds: float) -> str:
    loss = " ".join(f"{t}={v:.4f}" for t, v in stats["train_loss"].items())
    val = " | ".join(f"{t}: " + " ".join(f"{k}={v:.4f}" for k, v in ms.items())
                     for t, ms in stats.get("val", {}).items())
    return f"epoch {stats['epoch'] + 1}/{epochs} ({seconds:.1f}s)  loss {loss}  val {val}"
