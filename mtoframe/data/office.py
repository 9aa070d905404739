"""Office-31 / Office-Home: one classification task per domain, each with its own images
(multi-input), from image-list files as LibMTL ships them (``{domain}_{split}.txt``, one
``relative/path label`` per line).

Images are decoded from ``.npy`` arrays (H×W×3, uint8 or float in [0, 1]) without extra
dependencies, or from image files with Pillow (``pip install mtoframe[images]``), resized to
``size×size`` and normalised with the ImageNet mean and std as LibMTL's transform does.

:class:`MultiInputLoader` yields the trainer's multi-input batches ``{task: (inputs, target)}``;
an epoch lasts as many steps as the longest domain has batches and shorter domains start over
(reshuffled), as LibMTL's multi-input loop does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import OptionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICE31 = ("amazon", "dslr", "webcam")
OFFICEHOME = ("Art", "Clipart", "Product", "Real_World")


def read_image_list(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """``[(relative path, label)]`` from a ``path label`` per line file (blank lines skipped;
    the path may contain spaces, the label is the last field)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rel, _, label = line.strip().rpartition(" ")
        if not rel or not label.lstrip("-").isdigit():
            raise OptionError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
        out.append((rel, int(label)))
    return out


def _decode(path: Path, size: int) -> Tensor:
    if path.suffix == ".npy":
        a = np.load(path)
        img = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
        img = img.float() / 255.0 if a.dtype == np.uint8 else img.float()
        if img.shape[-2:] != (size, size):
            img = torch.nn.functional.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        return img
    try:
        from PIL import Image
    except ImportError as exc:
        raise OptionError(f"decoding {path.name} needs Pillow: pip install 'mtoframe[images]' "
                          "(or convert the images to .npy arrays)") from exc
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


class ImageListDataset(Dataset[tuple[Tensor, Tensor]]):
    """Items ``(image [3, size, size], label)`` of one domain's image list; paths are relative
    to ``root``."""

    def __init__(self, root: str | os.PathLike[str], list_file: str | os.PathLike[str], *, size: int = 224,
                 normalize: bool = True) -> None:
        self.root, self.size = Path(root), size
        self.items = read_image_list(list_file)
        if not self.items:
            raise OptionError(f"image list {list_file} is empty")
        self.norm = ((torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1))
                     if normalize else None)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        rel, label = self.items[i]
        img = _decode(self.root / rel, self.size)
        if self.norm is not None:
            mean, std = self.norm
            img = (img - mean) / std
        return img, torch.tensor(label, dtype=torch.long)


def office_datasets(root: str | os.PathLike[str], list_dir: str | os.PathLike[str], *,
                    domains: Sequence[str] = OFFICE31, split: str = "train", size: int = 224,
                    normalize: bool = True) -> dict[str, ImageListDataset]:
    """``{domain: dataset}`` from ``{list_dir}/{domain}_{split}.txt``."""
    out = {}
    for d in domains:
        f = Path(list_dir) / f"{d}_{split}.txt"
        if not f.exists():
            have = sorted(p.name for p in Path(list_dir).glob("*.txt")) if Path(list_dir).is_dir() else []
            raise OptionError(f"no image list {f} for domain {d!r}; lists present: {have}")
        out[d] = ImageListDataset(root, f, size=size, normalize=normalize)
    return out


class MultiInputLoader:
    """Yields ``{task: (inputs [B, ...], labels [B])}`` with one DataLoader per task; shuffling
    draws from torch's global RNG (restored by checkpoints).

    ``cycle=True`` (training): shorter tasks start over until the longest is done.
    ``cycle=False`` (evaluation): every sample once; a finished task is left out of later
    batches (the trainer treats it as an absent label).
    """

    def __init__(self, datasets: Mapping[str, Dataset[Any]], *, batch_size: int, shuffle: bool = True,
                 num_workers: int = 0, drop_last: bool = False, cycle: bool = True) -> None:
        self.cycle = cycle
        if not datasets:
            raise OptionError("MultiInputLoader needs at least one task's dataset")
        self.loaders = {t: DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                      drop_last=drop_last) for t, ds in datasets.items()}
        empty = [t for t, dl in self.loaders.items() if len(dl) == 0]
        if empty:
            raise OptionError(f"task(s) {empty} have fewer samples than batch_size={batch_size} with drop_last")

    def __len__(self) -> int:
        return max(len(dl) for dl in self.loaders.values())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iters = {t: iter(dl) for t, dl in self.loaders.items()}
        for _ in range(len(self)):
            batch = {}
            for t, it in iters.items():
                try:
                    batch[t] = next(it)
                except StopIteration:  # a shorter domain
                    if self.cycle:
                        iters[t] = iter(self.loaders[t])
                        batch[t] = next(iters[t])
            yield {t: (x, y) for t, (x, y) in batch.items()}
