"""The model factory: an MLP encoder shared by one linear head per task."""

from __future__ import annotations

from torch import nn

from mtoframe import MultiTaskModel

from .data import N_SENSORS


def build(hidden: int = 32, depth: int = 2) -> MultiTaskModel:
    layers: list[nn.Module] = []
    width = N_SENSORS
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    heads = {"temperature": nn.Linear(hidden, 1), "rain": nn.Linear(hidden, 2), "wind": nn.Linear(hidden, 1)}
    return MultiTaskModel(encoder=nn.Sequential(*layers), heads=heads)
