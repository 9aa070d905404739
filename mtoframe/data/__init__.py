"""Datasets: the embedded ``scenes`` and ``manytask`` generators and loaders for the
preprocessed NYUv2 / Cityscapes ``.npy`` releases and Office-31 / Office-Home image lists.

The embedded ``scenes`` are generated once per parameter set and cached in the NYUv2 ``.npy``
layout, so the same :class:`NpyMultiTaskDataset` serves generated and real data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import OptionError
from .cache import build_once
from .manytask import ManyTaskDataset, manytask_data, manytask_datasets
from .npy import NpyMultiTaskDataset, write_npy_layout
from .office import MultiInputLoader, office_datasets
from .scenes import CLASSES, NUM_CLASSES, generate_scenes

__all__ = [
    "CLASSES",
    "NUM_CLASSES",
    "ManyTaskDataset",
    "MultiInputLoader",
    "NpyMultiTaskDataset",
    "cache_root",
    "cityscapes_datasets",
    "generate_scenes",
    "manytask_data",
    "manytask_datasets",
    "nyuv2_datasets",
    "office_datasets",
    "scenes_datasets",
    "write_npy_layout",
]

#: bump when the generator's output changes, so stale caches are not reused
SCENES_VERSION = 2


def cache_root() -> Path:
    """``$MTOFRAME_CACHE`` if set, else ``~/.cache/mtoframe``."""
    env = os.environ.get("MTOFRAME_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtoframe"


def scenes_datasets(*, n_train: int = 2000, n_val: int = 400, size: int = 64, seed: int = 0,
                    cache_dir: str | os.PathLike[str] | None = None
                    ) -> tuple[NpyMultiTaskDataset, NpyMultiTaskDataset]:
    """``(train, val)`` of the embedded NYUv2-like scenes, generated on first use and cached in
    the NYUv2 layout under ``cache_dir`` (default ``cache_root()/scenes-<params>``). Validation
    images are disjoint from training images (they continue the same per-image seed stream)."""
    root = Path(cache_dir) if cache_dir is not None else (
        cache_root() / f"scenes-v{SCENES_VERSION}-n{n_train}-{n_val}-s{size}-seed{seed}")

    def fill(tmp: Path) -> None:
        write_npy_layout(tmp, "train", generate_scenes(n_train, size=size, seed=seed))
        write_npy_layout(tmp, "val", generate_scenes(n_val, size=size, seed=seed, offset=n_train))

    build_once(root, fill, f"scenes v{SCENES_VERSION} n_train={n_train} n_val={n_val} size={size} seed={seed}",
               what="scenes")
    return NpyMultiTaskDataset(root, "train", preload=True), NpyMultiTaskDataset(root, "val", preload=True)


def nyuv2_datasets(root: str | os.PathLike[str], *, tasks: Sequence[str] = ("segmentation", "depth", "normal")
                   ) -> tuple[NpyMultiTaskDataset, NpyMultiTaskDataset]:
    """``(train, val)`` of the preprocessed NYUv2 release at ``root`` (13 classes, depth,
    normals)."""
    return NpyMultiTaskDataset(root, "train", tasks=tasks), NpyMultiTaskDataset(root, "val", tasks=tasks)


def cityscapes_datasets(root: str | os.PathLike[str], label_dir: str = "label_7", *,
                        tasks: Sequence[str] = ("segmentation", "depth")
                        ) -> tuple[NpyMultiTaskDataset, NpyMultiTaskDataset]:
    """``(train, val)`` of the preprocessed Cityscapes release at ``root``: segmentation from
    ``label_dir`` (``label_7``, or ``label`` in some copies) and depth; no normals."""
    if "normal" in tasks:
        raise OptionError("the Cityscapes release has no surface normals; tasks must be among segmentation, depth")
    return (NpyMultiTaskDataset(root, "train", tasks=tasks, label_dir=label_dir),
            NpyMultiTaskDataset(root, "val", tasks=tasks, label_dir=label_dir))
