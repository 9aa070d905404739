"""The dataset: days generated from three hidden weather drivers, deterministic by seed."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

N_SENSORS = 24


class WeatherDays(Dataset):
    """``n`` days; item ``i`` is ``(readings[24], {"temperature": [1], "rain": class, "wind": [1]})``.

    Hidden drivers per day: season, humidity and pressure trend. The sensors see random mixtures of
    them plus noise; the targets are nonlinear in them, and rain depends on humidity *against* the
    pressure trend that drives wind, so the tasks partly pull the shared encoder apart.
    """

    def __init__(self, n: int, *, seed: int, offset: int = 0) -> None:
        mixing = np.random.default_rng(seed).normal(0.0, 1.0, (3, N_SENSORS))  # fixed per seed: same sensors
        rng = np.random.default_rng([seed, offset])
        season, humidity, trend = rng.normal(0.0, 1.0, (3, n))
        drivers = np.stack([season, humidity, trend], 1)
        readings = drivers @ mixing + 0.3 * rng.normal(0.0, 1.0, (n, N_SENSORS))
        temperature = 12.0 + 8.0 * np.tanh(season) - 2.0 * humidity + rng.normal(0.0, 1.0, n)
        rain = (humidity - 0.8 * trend + 0.5 * rng.normal(0.0, 1.0, n) > 0.3).astype(np.int64)
        wind = 20.0 * np.abs(trend) + 5.0 * np.maximum(season, 0) + rng.normal(0.0, 2.0, n)
        self.x = torch.tensor(readings, dtype=torch.float32)
        self.temperature = torch.tensor(temperature, dtype=torch.float32).unsqueeze(1)
        self.rain = torch.tensor(rain)
        self.wind = torch.tensor(wind, dtype=torch.float32).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {"temperature": self.temperature[i], "rain": self.rain[i], "wind": self.wind[i]}


def make_datasets(n_train: int = 512, n_val: int = 128, n_test: int = 256, seed: int = 0):
    """``(train, val, test)``: disjoint days (different ``offset`` streams) of the same sensors."""
    return (WeatherDays(n_train, seed=seed, offset=0), WeatherDays(n_val, seed=seed, offset=1),
            WeatherDays(n_test, seed=seed, offset=2))
