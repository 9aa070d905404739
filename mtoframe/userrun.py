"""A run built from user code: the ``[data]`` / ``[model]`` factories and ``[[tasks]]`` tables of
a run config (see :mod:`mtoframe.config` for the keys, :mod:`mtoframe.factories` for the
convention), with every returned object checked before training starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import factories
from .config import FactorySpec, RunConfig, TaskSpec
from .errors import MtoError, OptionError
from .metrics import Accuracy, MeanError, Metric
from .model import MultiTaskModel, Task, check_tasks

BUILTIN_LOSSES = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "smooth_l1": F.smooth_l1_loss,
    "cross_entropy": F.cross_entropy,
    "bce_logits": F.binary_cross_entropy_with_logits,
}
BUILTIN_METRICS = {"mae": lambda: MeanError("mae"), "mse": lambda: MeanError("mse"), "accuracy": Accuracy}


@attrs.frozen
class UserRun:
    model: MultiTaskModel
    tasks: list[Task]
    train: Dataset[Any]
    val: Dataset[Any]
    #: ``None`` when the data factory returned only ``(train, val)``
    test: Dataset[Any] | None


def build_user_run(cfg: RunConfig) -> UserRun:
    """Call the config's data and model factories and build its tasks (seed the RNG first: the
    factories run in this order, data then model)."""
    factories.add_pythonpath(cfg.pythonpath)
    assert cfg.data.factory is not None and cfg.model.factory is not None and cfg.tasks is not None
    specs = [t for t in cfg.tasks if isinstance(t, TaskSpec)]
    tasks = [build_task(t, i) for i, t in enumerate(specs)]
    names = [t.name for t in tasks]
    train, val, test = build_data(cfg.data.factory, cfg.data.args, names)
    where = f"[model] factory = {cfg.model.factory!r}"
    model = factories.call(cfg.model.factory, cfg.model.args, "[model] factory")
    if not isinstance(model, MultiTaskModel):
        raise OptionError(f"{where} returned {factories.describe(model)}; it must return a mtoframe.MultiTaskModel "
                          "(an encoder and a dict of heads, one per [[tasks]] name)")
    try:
        check_tasks(model, tasks)
    except MtoError as exc:
        raise OptionError(f"{where}: {exc}") from None
    return UserRun(model, tasks, train, val, test)


def build_data(path: str, args: dict[str, Any], task_names: Sequence[str]
               ) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any] | None]:
    where = f"[data] factory = {path!r}"
    out = factories.call(path, args, "[data] factory")
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
        raise OptionError(f"{where} returned {factories.describe(out)}; it must return a tuple (train, val) or "
                          "(train, val, test) of datasets")
    splits = list(out) + [None] * (3 - len(out))
    for split, ds in zip(("train", "val", "test"), splits, strict=True):
        if ds is not None:
            check_dataset(ds, split, where, task_names)
    return splits[0], splits[1], splits[2]


def check_dataset(ds: Any, split: str, where: str, task_names: Sequence[str]) -> None:
    """The batch format of the trainer: ``len(ds)`` items, each ``(input, {task: target})``,
    with task names among the config's (an item may lack some: partial labels)."""
    if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
        raise OptionError(f"{where}: the {split} split is {factories.describe(ds)}, not a map-style dataset "
                          "(__len__ and __getitem__)")
    if len(ds) == 0:
        raise OptionError(f"{where}: the {split} split is empty")
    item = ds[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
        raise OptionError(f"{where}: item 0 of the {split} split is {factories.describe(item)}; items must be "
                          "(input, {task_name: target})")
    unknown = sorted(set(item[1]) - set(task_names))
    if unknown:
        raise OptionError(f"{where}: item 0 of the {split} split has targets for {unknown}, which are not "
                          f"[[tasks]] names; tasks: {list(task_names)}")


def build_task(spec: TaskSpec, i: int) -> Task:
    where = f"tasks[{i}] ({spec.name!r})"
    loss = _build(spec.loss, BUILTIN_LOSSES, f"{where}.loss")
    if not callable(loss):
        raise OptionError(f"{where}.loss: the factory returned {factories.describe(loss)}, which is not callable "
                          "as loss(prediction, target)")
    if isinstance(spec.loss, str) and isinstance(loss, type):
        raise OptionError(f"{where}.loss = {spec.loss!r} names a class; write loss = {{ factory = {spec.loss!r}, "
                          "args = {...} }} to construct it")
    metrics = []
    for j, m in enumerate(spec.metrics):
        obj = _build(m, BUILTIN_METRICS, f"{where}.metrics[{j}]", call_path=True)
        if not isinstance(obj, Metric) or not isinstance(getattr(obj, "directions", None), dict):
            raise OptionError(f"{where}.metrics[{j}] built {factories.describe(obj)}; a metric needs directions "
                              "({name: 'higher' | 'lower'}), reset(), update(prediction, target) and compute()")
        bad = {k: d for k, d in obj.directions.items() if d not in ("higher", "lower")}
        if bad:
            raise OptionError(f"{where}.metrics[{j}] has directions {bad}; each must be 'higher' or 'lower'")
        metrics.append(obj)
    try:
        return Task(spec.name, loss=loss, metrics=metrics)
    except MtoError as exc:
        raise OptionError(f"{where}: {exc}") from None


def _build(spec: str | FactorySpec, builtins: dict[str, Any], where: str, *, call_path: bool = False) -> Any:
    """A built-in (metrics are constructed fresh), a bare path (the object itself, or, for
    metrics, called without arguments) or ``factory(**args)``."""
    if isinstance(spec, FactorySpec):
        return factories.call(spec.factory, spec.args, where)
    if spec in builtins:
        return builtins[spec]() if call_path else builtins[spec]
    if call_path:
        return factories.call(spec, {}, where)
    return factories.resolve(spec, where)
