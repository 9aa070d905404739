"""The preprocessed ``.npy`` layout of the MTAN release that LibMTL also reads, for NYUv2,
Cityscapes and the embedded ``scenes``.

``{root}/{split}/{image,label,depth,normal}/{i}.npy``, one file per sample, channels last as in
the release: ``image`` [H,W,3] float, ``label`` [H,W] float class index (−1 = ignore), ``depth``
[H,W,1] (0 = invalid), ``normal`` [H,W,3] unit vectors (0 = invalid). Cityscapes has no normals
and keeps labels under ``label_7`` (7 classes) or ``label_19``/``label`` depending on the
release. The loader moves channels first, as the MTAN and LibMTL loaders do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import OptionError

#: task name -> sub-directory of the layout (segmentation's is ``label_dir``)
TASK_DIRS = {"segmentation": "label", "depth": "depth", "normal": "normal"}


def write_npy_layout(root: str | os.PathLike[str], split: str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` (channels-first, as :func:`mtoframe.data.scenes.generate_scenes` returns:
    ``image`` [n,3,H,W], ``label`` [n,H,W], ``depth`` [n,1,H,W], ``normal`` [n,3,H,W]; any
    subset with ``image``) as ``{root}/{split}/<key>/{i}.npy`` in the release's channels-last
    convention. Returns the split directory."""
    if "image" not in arrays:
        raise OptionError(f"write_npy_layout needs an 'image' array; got keys {sorted(arrays)}")
    n = len(arrays["image"])
    base = Path(root) / split
    for key, arr in arrays.items():
        if len(arr) != n:
            raise OptionError(f"array {key!r} has {len(arr)} samples, 'image' has {n}")
        folder = base / key
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = arr[i]
            if a.ndim == 3:
                a = np.moveaxis(a, 0, -1)
            if key.startswith("label"):
                a = a.astype(np.float32)  # the release stores class indices as floats
            np.save(folder / f"{i}.npy", np.ascontiguousarray(a))
    return base


class NpyMultiTaskDataset(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """One split of the ``.npy`` layout: items ``(image [3,H,W] float32, {task: target})`` with
    ``segmentation`` a LongTensor [H,W] (−1 ignore), ``depth`` [1,H,W] (0 invalid) and
    ``normal`` [3,H,W] (0 invalid).

    :param tasks: which targets to load, among ``segmentation``, ``depth``, ``normal``.
    :param label_dir: the segmentation sub-directory (``label``; Cityscapes ``label_7``).
    :param preload: read every file once at construction and serve from memory (what the
        small embedded datasets use; real datasets stream from disk).
    """

    def __init__(self, root: str | os.PathLike[str], split: str, *,
                 tasks: Sequence[str] = ("segmentation", "depth", "normal"), label_dir: str = "label",
                 preload: bool = False) -> None:
        unknown = [t for t in tasks if t not in TASK_DIRS]
        if unknown or not tasks:
            raise OptionError(f"tasks must be a non-empty subset of {list(TASK_DIRS)}; got {list(tasks)}")
        self.root, self.split, self.tasks = Path(root), split, tuple(tasks)
        self.path = self.root / split
        self.dirs = {t: (label_dir if t == "segmentation" else TASK_DIRS[t]) for t in self.tasks}
        image_dir = self.path / "image"
        if not image_dir.is_dir():
            raise OptionError(f"no {image_dir}: expected the layout {{root}}/{{split}}/image/{{i}}.npy "
                              "(the MTAN/LibMTL preprocessed release)")
        self.length = sum(1 for f in os.listdir(image_dir) if f.endswith(".npy"))
        for task, sub in self.dirs.items():
            d = self.path / sub
            count = sum(1 for f in os.listdir(d) if f.endswith(".npy")) if d.is_dir() else 0
            if count != self.length:
                present = sorted(p.name for p in self.path.iterdir() if p.is_dir())
                raise OptionError(f"task {task!r} needs {self.length} files in {d}, found {count}; "
                                  f"sub-directories present: {present}")
        self._cache: list[tuple[Tensor, dict[str, Tensor]]] | None = None
        if preload:
            self._cache = [self._load(i) for i in range(self.length)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return self._cache[index] if self._cache is not None else self._load(index)

    def _read(self, sub: str, index: int) -> Tensor:
        a = np.load(self.path / sub / f"{index}.npy")
        if a.ndim == 2 and sub != self.dirs.get("segmentation"):
            a = a[..., None]  # depth saved without a channel axis
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0) if a.ndim == 3 else a))

    def _load(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = self._read("image", index).float()
        targets: dict[str, Tensor] = {}
        for task, sub in self.dirs.items():
            t = self._read(sub, index)
            # Labels are stored as floats; every negative value means ignore (−1).
            targets[task] = t.round().long().clamp_min(-1) if task == "segmentation" else t.float()
        return image, targets
