"""The ``manytask`` generator (MMoE paper's, extended to T tasks)."""

from __future__ import annotations

import numpy as np
import pytest

from mtoframe.data.manytask import manytask_data, manytask_datasets, task_weights
from mtoframe.errors import OptionError


@pytest.mark.parametrize(("tasks", "p"), [(2, 0.0), (5, 0.5), (32, 0.9)])
def test_weight_cosines_are_exactly_the_correlation(tasks, p):
    w = task_weights(tasks, 32, p, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-12)
    gram = w @ w.T
    np.testing.assert_allclose(gram[~np.eye(tasks, dtype=bool)], p, atol=1e-10)


def test_more_tasks_than_inputs_scatter_around_the_correlation():
    w = task_weights(40, 32, 0.5, np.random.default_rng(0))
    off = (w @ w.T)[~np.eye(40, dtype=bool)]
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-12)
    assert abs(off.mean() - 0.5) < 0.03 and off.std() < 0.15


def test_shapes_determinism_and_correlation_controls_label_similarity():
    x, ys = manytask_data(tasks=3, n=64, seed=5)
    assert x.shape == (64, 32) and x.dtype == np.float32 and sorted(ys) == ["t0", "t1", "t2"]
    assert all(y.shape == (64, 1) for y in ys.values())
    x2, ys2 = manytask_data(tasks=3, n=64, seed=5)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(ys["t2"], ys2["t2"])

    def label_corr(p):
        _, y = manytask_data(tasks=2, n=4000, correlation=p, seed=1)
        return np.corrcoef(y["t0"][:, 0], y["t1"][:, 0])[0, 1]

    assert label_corr(0.0) < label_corr(0.5) < label_corr(0.95)
    assert label_corr(0.95) > 0.8


def test_datasets_split_one_draw():
    train, val = manytask_datasets(tasks=2, n_train=10, n_val=4, seed=3)
    x, ys = manytask_data(tasks=2, n=14, seed=3)
    assert len(train) == 10 and len(val) == 4
    np.testing.assert_array_equal(val[0][0].numpy(), x[10])
    np.testing.assert_array_equal(val[3][1]["t1"].numpy(), ys["t1"][13])


@pytest.mark.parametrize(("kw", "match"), [
    (dict(tasks=1), "tasks"), (dict(tasks=41), "tasks"), (dict(tasks=True), "tasks"),
    (dict(tasks=3, correlation=1.0), "correlation"), (dict(tasks=3, correlation=-0.1), "correlation"),
    (dict(tasks=3, n=0), "n must"), (dict(tasks=3, d_in=1), "d_in"),
])
def test_bad_arguments_name_the_option(kw, match):
    kw.setdefault("n", 8)
    with pytest.raises(OptionError, match=match):
        manytask_data(**kw)
