"""Office image lists (multi-input) on generated fixtures: .npy and PNG images, the loader's
batches, and one trainer step and evaluation on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtoframe import MultiTaskModel, Task, Trainer
from mtoframe.data.office import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiInputLoader,
    office_datasets,
    read_image_list,
)
from mtoframe.errors import OptionError
from mtoframe.metrics import Accuracy

SIZES = {"amazon": 5, "dslr": 3}


@pytest.fixture
def office(tmp_path):
    rng = np.random.default_rng(0)
    lists = tmp_path / "lists"
    lists.mkdir()
    for domain, n in SIZES.items():
        lines = []
        for i in range(n):
            img = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            rel = f"{domain}/images/class {i % 2}/{i}.npy"  # a space in the path, as Office-Home has
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / rel, img)
            lines.append(f"{rel} {i % 2}")
        (lists / f"{domain}_train.txt").write_text("\n".join(lines) + "\n\n")
    return tmp_path, lists


def test_read_image_list_and_errors(office):
    root, lists = office
    items = read_image_list(lists / "amazon_train.txt")
    assert items[3] == ("amazon/images/class 1/3.npy", 1) and len(items) == 5
    (lists / "bad_train.txt").write_text("no-label-here\n")
    with pytest.raises(OptionError, match="bad_train.txt:1"):
        read_image_list(lists / "bad_train.txt")
    with pytest.raises(OptionError, match="lists present"):
        office_datasets(root, lists, domains=("webcam",))


def test_npy_images_are_resized_and_normalised(office):
    root, lists = office
    ds = office_datasets(root, lists, domains=("amazon",), size=8)["amazon"]
    x, y = ds[2]
    assert x.shape == (3, 8, 8) and y.item() == 0
    raw = office_datasets(root, lists, domains=("amazon",), size=12, normalize=False)["amazon"]
    # the stored 12×10 uint8 pixels over 255, resized bilinearly to 12×12 ...
    x12, _ = raw[2]
    stored = np.load(root / "amazon/images/class 0/2.npy")
    expected = torch.nn.functional.interpolate(torch.from_numpy(stored).permute(2, 0, 1)[None].float() / 255,
                                               size=(12, 12), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(x12, expected)
    # ... and normalisation is (x − mean) / std with the ImageNet statistics
    norm = office_datasets(root, lists, domains=("amazon",), size=12)["amazon"][2][0]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(norm, (x12 - mean) / std)


def test_png_images_with_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    arr = np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    (tmp_path / "d_train.txt").write_text("a.png 4\n")
    x, y = office_datasets(tmp_path, tmp_path, domains=("d",), size=6, normalize=False)["d"][0]
    torch.testing.assert_close(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    assert y.item() == 4


def test_multi_input_loader_cycles_for_training_and_not_for_evaluation(office):
    root, lists = office
    ds = office_datasets(root, lists, domains=tuple(SIZES), size=8)
    train = MultiInputLoader(ds, batch_size=2)
    batches = list(train)
    assert len(train) == len(batches) == 3  # amazon: 5 samples -> 3 batches of ≤2
    assert all(set(b) == {"amazon", "dslr"} for b in batches)  # dslr (2 batches) starts over
    assert batches[0]["amazon"][0].shape == (2, 3, 8, 8) and batches[0]["amazon"][1].dtype == torch.int64
    evaluation = list(MultiInputLoader(ds, batch_size=2, shuffle=False, cycle=False))
    assert [sorted(b) for b in evaluation] == [["amazon", "dslr"], ["amazon", "dslr"], ["amazon"]]
    assert sum(len(b["dslr"][1]) for b in evaluation if "dslr" in b) == 3


def test_trainer_steps_and_evaluates_on_multi_input_batches(office):
    root, lists = office
    torch.manual_seed(0)
    ds = office_datasets(root, lists, domains=tuple(SIZES), size=8)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = MultiTaskModel(encoder=encoder, heads={d: nn.Linear(4, 2) for d in SIZES})
    tasks = [Task(d, loss=nn.functional.cross_entropy, metrics=[Accuracy()]) for d in SIZES]
    trainer = Trainer(model, tasks, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    history = trainer.fit(MultiInputLoader(ds, batch_size=2), epochs=1,
                          val=MultiInputLoader(ds, batch_size=2, shuffle=False, cycle=False))
    assert trainer.global_step == 3
    assert set(history[0]["val"]) == set(SIZES)
    # accuracy over every sample exactly once: a multiple of 1/5 and of 1/3
    assert round(history[0]["val"]["amazon"]["acc"] * 5, 6).is_integer()
    assert round(history[0]["val"]["dslr"]["acc"] * 3, 6).is_integer()
