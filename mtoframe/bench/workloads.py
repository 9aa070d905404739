"""The models, tasks and data the benchmarks run on: ``scenes`` (the embedded NYUv2-like
dataset, three dense tasks) and ``manytask`` (T regression tasks, for scaling in T)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Dataset

from ..model import MultiTaskModel, Task


@attrs.define
class Workload:
    """A model template, its tasks and one fixed batch; ``fresh_model()`` returns an independent
    copy of the same initial weights so every contender starts from identical parameters."""

    name: str
    model: MultiTaskModel
    tasks: list[Task]
    batch: tuple[Any, dict[str, Any]]
    info: dict[str, Any] = attrs.field(factory=dict)
    #: builds a single-task model for task ``name`` (quality baselines); None when unsupported
    single_task_model: Callable[[str], MultiTaskModel] | None = None

    def fresh_model(self) -> MultiTaskModel:
        return copy.deepcopy(self.model)

    def to(self, device: torch.device) -> Workload:
        self.model = self.model.to(device)
        self.batch = to_device(self.batch, device)
        return self


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def first_batch(ds: Dataset[Any], size: int) -> Any:
    return next(iter(DataLoader(ds, batch_size=size, shuffle=False)))


def scenes_workload(*, size: int = 64, batch: int = 16, width: int = 32, seed: int = 0,
                    cache_dir: str | None = None) -> Workload:
    """The scene model of :mod:`mtoframe.models.hps` on ``batch`` generated images."""
    from ..data import scenes_datasets
    from ..data.scenes import NUM_CLASSES
    from ..models.hps import build_scene_model, scene_tasks

    train, _ = scenes_datasets(n_train=batch, n_val=batch, size=size, seed=seed, cache_dir=cache_dir)
    torch.manual_seed(seed)
    model = build_scene_model(num_classes=NUM_CLASSES, width=width)
    tasks = scene_tasks(NUM_CLASSES)

    def single(task: str) -> MultiTaskModel:
        torch.manual_seed(seed)
        return build_scene_model(num_classes=NUM_CLASSES, width=width, tasks=(task,))

    return Workload("scenes", model, tasks, first_batch(train, batch),
                    info={"size": size, "batch": batch, "width": width, "seed": seed,
                          "shared_params": sum(p.numel() for p in model.shared_parameters()),
                          "params": sum(p.numel() for p in model.parameters())},
                    single_task_model=single)


def manytask_workload(*, tasks: int, batch: int = 64, seed: int = 0) -> Workload:
    """The many-task regression model of :mod:`mtoframe.models.hps` with ``tasks`` tasks."""
    from ..data.manytask import manytask_data
    from ..models.hps import build_manytask_model, manytask_tasks

    x, ys = manytask_data(tasks=tasks, n=batch, seed=seed)
    torch.manual_seed(seed)
    model = build_manytask_model(tasks=tasks)
    inputs = torch.as_tensor(x, dtype=torch.float32)
    targets = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in ys.items()}
    return Workload("manytask", model, manytask_tasks(tasks), (inputs, targets),
                    info={"tasks": tasks, "batch": batch, "seed": seed,
                          "shared_params": sum(p.numel() for p in model.shared_parameters()),
                          "params": sum(p.numel() for p in model.parameters())})


def parse_stacks(spec: str) -> list[list[str]]:
    """``"ew,repmtl+nashmtl"`` -> ``[["ew"], ["repmtl", "nashmtl"]]``."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        if item:
            out.append([p.strip() for p in item.split("+") if p.strip()])
    return out


#: stacks timed and trained besides every installed method alone (kept when all parts exist)
DEFAULT_COMBOS: tuple[tuple[str, ...], ...] = (
    ("repmtl", "nashmtl"),
    ("repmtl", "cagrad"),
    ("repmtl", "famo"),
    ("repmtl", "dbmtl"),
    ("repmtl", "fairgrad"),
    ("repmtl", "pcgrad"),
)


def default_stacks(installed: Sequence[str]) -> list[list[str]]:
    """EW first, then every installed method alone, then the combinations whose methods are
    all installed."""
    have = set(installed)
    stacks = [["ew"]] + [[n] for n in sorted(have) if n != "ew"]
    stacks += [list(c) for c in DEFAULT_COMBOS if have.issuperset(c)]
    return stacks
