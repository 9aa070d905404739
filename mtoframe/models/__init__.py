"""Reference models in plain PyTorch (no torchvision): the small encoder-dominant HPS conv net
for CPU benchmarks on ``scenes``, Multi-LeNet for MultiMNIST, an MLP for ``manytask``, ResNet-18
for Office and a dilated ResNet-50 with DeepLabV3+-style ASPP heads for NYUv2 / Cityscapes."""

from __future__ import annotations

from .hps import (
    build_manytask_model,
    build_multilenet,
    build_scene_model,
    manytask_tasks,
    multimnist_tasks,
    scene_tasks,
)

__all__ = ["build_manytask_model", "build_multilenet", "build_scene_model", "manytask_tasks", "multimnist_tasks",
           "scene_tasks"]
