"""Metrics and summary numbers against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from mtoframe.metrics import Accuracy, Depth, MeanError, Normals, Segmentation, delta_m, delta_p_task


def test_segmentation_miou_and_pixacc_with_ignore():
    target = torch.tensor([[0, 0, 1, -1], [1, 2, 2, 2]])
    pred_label = torch.tensor([[0, 1, 1, 2], [1, 2, 2, 0]])
    logits = torch.nn.functional.one_hot(pred_label, 3).permute(2, 0, 1).unsqueeze(0).float()
    m = Segmentation(3, ignore_index=-1)
    m.update(logits, target.unsqueeze(0))
    out = m.compute()
    # class 0: tp 1, fp 1 (last pixel), fn 1 -> 1/3; class 1: tp 2, fp 1, fn 0 -> 2/3; class 2: tp 2, fn 1 -> 2/3
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert out["pixacc"] == pytest.approx(5 / 7)


def test_depth_errors_on_valid_pixels_only():
    target = torch.tensor([[[2.0, 0.0, 4.0]]])
    pred = torch.tensor([[[1.0, 9.0, 5.0]]])
    m = Depth()
    m.update(pred, target)
    assert m.compute() == pytest.approx({"abs_err": 1.0, "rel_err": (0.5 + 0.25) / 2})


def test_normal_angles():
    target = torch.zeros(1, 3, 1, 4)
    target[0, 2] = 1.0  # all pointing up
    target[0, :, 0, 3] = 0.0  # invalid pixel
    angles = torch.deg2rad(torch.tensor([0.0, 20.0, 60.0, 0.0]))
    pred = torch.stack([torch.sin(angles), torch.zeros(4), torch.cos(angles)]).reshape(1, 3, 1, 4) * 3.0
    m = Normals()
    m.update(pred, target)
    out = m.compute()
    assert out["mean"] == pytest.approx(80 / 3, abs=1e-4)
    assert out["median"] == pytest.approx(20.0, abs=1e-4)
    assert out["within_11.25"] == pytest.approx(1 / 3)
    assert out["within_22.5"] == pytest.approx(2 / 3)
    assert out["within_30"] == pytest.approx(2 / 3)


def test_accuracy_and_mean_errors():
    a = Accuracy()
    a.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 0]))
    assert a.compute()["acc"] == pytest.approx(2 / 3)
    e = MeanError("mse")
    e.update(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
    assert e.compute()["mse"] == 5.0


def test_delta_summaries_hand_computed():
    dirs = {"seg": {"miou": "higher", "pixacc": "higher"}, "depth": {"abs_err": "lower"}}
    base = {"seg": {"miou": 0.5, "pixacc": 0.8}, "depth": {"abs_err": 0.4}}
    res = {"seg": {"miou": 0.55, "pixacc": 0.76}, "depth": {"abs_err": 0.3}}
    # per metric signed improvement: +10%, -5%, +25%
    assert delta_p_task(res, base, dirs) == pytest.approx(100 * ((0.10 - 0.05) / 2 + 0.25) / 2)
    assert delta_m(res, base, dirs) == pytest.approx(-100 * (0.10 - 0.05 + 0.25) / 3)
    assert delta_p_task(base, base, dirs) == 0 and delta_m(base, base, dirs) == 0
    assert not math.isnan(delta_m(res, base, dirs))
