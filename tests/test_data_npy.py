"""The ``.npy`` layout writer and loader (NYUv2, Cityscapes, the cached ``scenes``) on fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtoframe.data import (
    NpyMultiTaskDataset,
    cityscapes_datasets,
    generate_scenes,
    nyuv2_datasets,
    scenes_datasets,
    write_npy_layout,
)
from mtoframe.errors import OptionError


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    return generate_scenes(4, size=16, seed=1)


def test_writer_uses_the_release_convention(tmp_path, arrays):
    write_npy_layout(tmp_path, "train", arrays)
    image = np.load(tmp_path / "train/image/2.npy")
    label = np.load(tmp_path / "train/label/2.npy")
    depth = np.load(tmp_path / "train/depth/2.npy")
    normal = np.load(tmp_path / "train/normal/2.npy")
    # channels last, labels as floats, as in the MTAN/LibMTL preprocessed NYUv2
    assert image.shape == (16, 16, 3) and label.shape == (16, 16) and label.dtype == np.float32
    assert depth.shape == (16, 16, 1) and normal.shape == (16, 16, 3)
    np.testing.assert_array_equal(np.moveaxis(image, -1, 0), arrays["image"][2])
    np.testing.assert_array_equal(label.astype(np.int64), arrays["label"][2])


def test_loader_round_trip_matches_the_release_reading(tmp_path, arrays):
    write_npy_layout(tmp_path, "val", arrays)
    ds = NpyMultiTaskDataset(tmp_path, "val")
    assert len(ds) == 4
    for i in range(4):
        x, y = ds[i]
        # what the MTAN/LibMTL loaders do: np.load then move the channel axis first
        ref = torch.from_numpy(np.moveaxis(np.load(tmp_path / f"val/image/{i}.npy"), -1, 0))
        torch.testing.assert_close(x, ref)
        assert y["segmentation"].dtype == torch.int64 and y["segmentation"].shape == (16, 16)
        torch.testing.assert_close(y["segmentation"], torch.from_numpy(arrays["label"][i]))
        torch.testing.assert_close(y["depth"], torch.from_numpy(arrays["depth"][i]))
        torch.testing.assert_close(y["normal"], torch.from_numpy(arrays["normal"][i]))
    with pytest.raises(IndexError):
        ds[4]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[0].shape == (3, 3, 16, 16) and batch[1]["depth"].shape == (3, 1, 16, 16)


def test_nyuv2_and_cityscapes_layouts(tmp_path, arrays):
    nyu = tmp_path / "nyu"
    for split in ("train", "val"):
        write_npy_layout(nyu, split, arrays)
    train, val = nyuv2_datasets(nyu)
    assert len(train) == len(val) == 4 and set(train[0][1]) == {"segmentation", "depth", "normal"}

    city = tmp_path / "city"
    labels7 = np.where(arrays["label"] >= 0, arrays["label"] % 7, -1)
    for split in ("train", "val"):
        write_npy_layout(city, split, {"image": arrays["image"], "label_7": labels7, "depth": arrays["depth"]})
        # some Cityscapes copies keep depth without a channel axis
        np.save(city / split / "depth" / "1.npy", arrays["depth"][1, 0])
    train, val = cityscapes_datasets(city)
    x, y = train[1]
    assert set(y) == {"segmentation", "depth"} and y["depth"].shape == (1, 16, 16)
    torch.testing.assert_close(y["segmentation"], torch.from_numpy(labels7[1]))
    assert (y["segmentation"] == -1).sum() == (labels7[1] == -1).sum()
    with pytest.raises(OptionError, match="label_19.*found 0.*sub-directories present"):
        cityscapes_datasets(city, label_dir="label_19")
    with pytest.raises(OptionError, match="no surface normals"):
        cityscapes_datasets(city, tasks=("segmentation", "normal"))


def test_missing_layout_is_explained(tmp_path):
    with pytest.raises(OptionError, match="image"):
        NpyMultiTaskDataset(tmp_path, "train")
    with pytest.raises(OptionError, match="subset"):
        NpyMultiTaskDataset(tmp_path, "train", tasks=("edges",))


def test_scenes_cache_is_built_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MTOFRAME_CACHE", str(tmp_path))
    train, val = scenes_datasets(n_train=5, n_val=3, size=16, seed=2)
    (root,) = [p for p in tmp_path.iterdir() if p.name.startswith("scenes-")]
    assert (root / "complete").exists() and len(train) == 5 and len(val) == 3
    # validation continues the per-image seed stream: disjoint from training, reproducible
    fresh = generate_scenes(3, size=16, seed=2, offset=5)
    torch.testing.assert_close(val[1][0], torch.from_numpy(fresh["image"][1]))

    import mtoframe.data as data

    def boom(*a, **k):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(data, "generate_scenes", boom)
    again, _ = scenes_datasets(n_train=5, n_val=3, size=16, seed=2)
    torch.testing.assert_close(again[4][0], train[4][0])

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OptionError, match="nothing there is deleted"):
        scenes_datasets(n_train=2, n_val=1, size=16, cache_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
