"""``manytask``: synthetic multi-task regression with controllable task correlation, the
generator of the MMoE paper (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task
Learning with Multi-gate Mixture-of-Experts", §4.1) extended from 2 to T tasks.

Per task ``y_t = w_tᵀx + Σ_{i=1..m} sin(α_i w_tᵀx + β_i) + ε``, ``x ~ N(0, I)``,
``ε ~ N(0, 0.01)`` (variance), ``m = 10``, ``α_i, β_i ~ N(0, 1)`` shared by the tasks (the
paper calls them given parameters without stating their law), and ``‖w_t‖ = c = 1``. Task
similarity is the cosine between weight vectors: the paper's two-task construction
``w_2 = c(p u_1 + sqrt(1−p²) u_2)`` generalises to the equicorrelated family
``cos(w_s, w_t) = p`` for every pair, built exactly from the Cholesky factor of the Gram matrix
``(1−p)I + p11ᵀ`` in a random orthonormal basis. That needs ``d_in ≥ T``; with more tasks than
input dimensions the pairs cannot all have cosine ``p`` and ``w_t = sqrt(p) u_0 +
sqrt(1−p) v_t`` is used instead, with ``v_t`` random unit vectors orthogonal to ``u_0``
(pairwise cosines then scatter around ``p``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import OptionError

_M = 10  # sinusoids per label (paper)


def task_weights(tasks: int, d_in: int, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """``[tasks, d_in]`` unit weight vectors with pairwise cosine ``correlation`` (exactly when
    ``d_in >= tasks``)."""
    p = correlation
    if d_in >= tasks:
        gram = (1 - p) * np.eye(tasks) + p * np.ones((tasks, tasks))
        factor = np.linalg.cholesky(gram)  # rows have the wanted Gram matrix
        basis, _ = np.linalg.qr(rng.standard_normal((d_in, tasks)))
        rows: np.ndarray = factor @ basis.T
        return rows
    u0 = rng.standard_normal(d_in)
    u0 /= np.linalg.norm(u0)
    v = rng.standard_normal((tasks, d_in))
    v -= np.outer(v @ u0, u0)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = np.sqrt(p) * u0 + np.sqrt(1 - p) * v
    return rows


def manytask_data(*, tasks: int, n: int, d_in: int = 32, correlation: float = 0.5,
                  seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(X [n, d_in] float32, {"t0": Y [n, 1], ..., f"t{tasks-1}": ...})``."""
    if isinstance(tasks, bool) or not isinstance(tasks, int) or not 2 <= tasks <= 40:
        raise OptionError(f"tasks must be an integer in [2, 40], got {tasks!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise OptionError(f"n must be a positive integer, got {n!r}")
    if isinstance(d_in, bool) or not isinstance(d_in, int) or d_in < 2:
        raise OptionError(f"d_in must be an integer >= 2, got {d_in!r}")
    if not isinstance(correlation, (int, float)) or not 0.0 <= correlation < 1.0:
        raise OptionError(f"correlation must be a number in [0, 1) (cosine of task weights), got {correlation!r}")
    rng = np.random.default_rng(seed)
    w = task_weights(tasks, d_in, float(correlation), rng)
    alpha, beta = rng.standard_normal(_M), rng.standard_normal(_M)
    x = rng.standard_normal((n, d_in))
    lin = x @ w.T  # [n, T]
    y = lin + np.sin(lin[..., None] * alpha + beta).sum(-1) + rng.normal(0.0, 0.1, lin.shape)
    return x.astype(np.float32), {f"t{i}": y[:, i : i + 1].astype(np.float32) for i in range(tasks)}


class ManyTaskDataset(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Items ``(x [d_in], {task: y [1]})`` from :func:`manytask_data` arrays."""

    def __init__(self, x: np.ndarray, ys: dict[str, np.ndarray]) -> None:
        self.x = torch.from_numpy(x)
        self.ys = {t: torch.from_numpy(y) for t, y in ys.items()}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {t: y[i] for t, y in self.ys.items()}


def manytask_datasets(*, tasks: int, n_train: int = 2000, n_val: int = 400, d_in: int = 32,
                      correlation: float = 0.5, seed: int = 0) -> tuple[ManyTaskDataset, ManyTaskDataset]:
    """``(train, val)``: one draw of ``n_train + n_val`` samples split in order (same task
    weights and sinusoids for both)."""
    x, ys = manytask_data(tasks=tasks, n=n_train + n_val, d_in=d_in, correlation=correlation, seed=seed)
    return (ManyTaskDataset(x[:n_train], {t: y[:n_train] for t, y in ys.items()}),
            ManyTaskDataset(x[n_train:], {t: y[n_train:] for t, y in ys.items()}))
