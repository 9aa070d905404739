"""CAGrad: c = 0, large c, brute-force agreement, rescale conventions, state, solver failure."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import mtoframe
from mtoframe.errors import OptionError
from mtoframe.numerics import min_norm_point
from mtoframe.solvers import SolverWarning
from mtoframe.testing import factories
from mtoframe.testing.conformance import conformance_tests
from mtoframe_cagrad import CAGrad, gram_factor

test_conformance = conformance_tests("cagrad")
test_conformance_official = conformance_tests("cagrad", c=0.5, rescale=2, scale_by_tasks=True)


def randg(T: int, P: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def brute_force(g: torch.Tensor, c: float) -> tuple[np.ndarray, float]:
    """w* by SLSQP on the simplex from several starts (float64), and the best objective."""
    G = g.numpy()
    T = G.shape[0]
    g0 = G.mean(0)
    n0 = np.linalg.norm(g0)

    def f(w):
        gw = w @ G
        return gw @ g0 + c * n0 * np.linalg.norm(gw)

    best = None
    starts = [np.full(T, 1.0 / T)] + [np.eye(T)[i] * 0.9 + 0.1 / T for i in range(T)]
    for x0 in starts:
        res = minimize(f, x0, method="SLSQP", bounds=[(0, 1)] * T,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                       options={"ftol": 1e-14, "maxiter": 1000})
        if best is None or res.fun < best.fun:
            best = res
    return best.x, float(best.fun)


def objective(g: torch.Tensor, w: np.ndarray, c: float) -> float:
    G = g.numpy()
    g0 = G.mean(0)
    gw = w @ G
    return float(gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw))


@pytest.mark.parametrize("T", [2, 3, 5])
def test_c_zero_gives_mean_gradient_exactly(T):
    g = randg(T, seed=T)
    for rescale in (0, 1, 2):
        d = mtoframe.aggregate(CAGrad(c=0.0, rescale=rescale), g)
        assert torch.equal(d, torch.full((T,), 1.0 / T, dtype=torch.float64) @ g)
    d = mtoframe.aggregate(CAGrad(c=0.0, scale_by_tasks=True), g)
    torch.testing.assert_close(d, g.sum(0))


@pytest.mark.parametrize("seed", range(3))
def test_large_c_approaches_mgda_direction(seed):
    g = randg(4, seed=seed)
    g[1] = -0.7 * g[0] + 0.3 * g[1]
    mgda = min_norm_point(g @ g.T).weights @ g
    d = mtoframe.aggregate(CAGrad(c=1e4), g)
    cos = float(d @ mgda / (d.norm() * mgda.norm()))
    assert cos > 1 - 1e-6


@pytest.mark.parametrize("c", [0.1, 0.4, 1.0, 3.0])
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_brute_force(c, seed):
    g = randg(3 + seed, P=15, seed=10 + seed)
    g[1] = -0.5 * g[0] + 0.5 * g[1]
    m = CAGrad(c=c, rescale=0)
    d = mtoframe.aggregate(m, g)
    w_bf, f_bf = brute_force(g, c)
    w = m.weights
    scale = float(g.norm(dim=1).max() ** 2)
    assert objective(g, w, c) <= f_bf + 1e-6 * scale
    G = g.numpy()
    g0 = G.mean(0)
    gw = w_bf @ G
    d_bf = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
    np.testing.assert_allclose(d.numpy(), d_bf, atol=1e-4 * np.linalg.norm(d_bf))


def test_update_formula_and_rescale_conventions():
    g = randg(3, seed=4)
    c = 0.5
    base = CAGrad(c=c, rescale=0)
    d0 = mtoframe.aggregate(base, g)
    w = torch.from_numpy(base.weights)
    g0 = g.mean(0)
    gw = w @ g
    torch.testing.assert_close(d0, g0 + c * g0.norm() / gw.norm() * gw)
    torch.testing.assert_close(mtoframe.aggregate(CAGrad(c=c, rescale=1), g), d0 / (1 + c * c))
    torch.testing.assert_close(mtoframe.aggregate(CAGrad(c=c, rescale=2), g), d0 / (1 + c))
    torch.testing.assert_close(mtoframe.aggregate(CAGrad(c=c, rescale=2, scale_by_tasks=True), g), 3 * d0 / (1 + c))


def test_worst_task_improvement_not_below_mean_gradient():
    """CAGrad's purpose: min_t g_tᵀd ≥ min_t g_tᵀg0 on conflicting gradients (rescale 0)."""
    g = randg(3, seed=5)
    g[2] = -0.9 * g[0] + 0.1 * g[2]
    d = mtoframe.aggregate(CAGrad(c=0.4, rescale=0), g)
    assert float((g @ d).min()) >= float((g @ g.mean(0)).min())


def test_gram_factor_rank_deficient():
    g = randg(2, seed=6)
    k = torch.cat([g, g[:1], g.sum(0, keepdim=True)]).numpy()
    k = k @ k.T
    r = gram_factor(k)
    np.testing.assert_allclose(r.T @ r, k, atol=1e-10 * np.abs(k).max())


@pytest.mark.parametrize("case", list(factories.gradient_families()), ids=lambda c: c.name)
def test_gradient_families(case):
    """Finite output, no solver failure, optimal against brute force, scale-equivariant."""
    m = CAGrad(rescale=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverWarning)
        d = mtoframe.aggregate(m, case.grads)
    assert bool(torch.isfinite(d).all()) and m.failures.count == 0
    s = float(case.grads.abs().max())
    unit = case.grads / s
    d_unit = mtoframe.aggregate(CAGrad(rescale=0), unit)
    torch.testing.assert_close(d / s, d_unit, rtol=0, atol=1e-4 * float(d_unit.norm()))  # solver tolerance
    if unit.shape[0] <= 5:
        _, f_bf = brute_force(unit, 0.4)
        assert objective(unit, m.weights, 0.4) <= f_bf + 1e-6 * float(unit.norm(dim=1).max() ** 2)


def test_state_dict_round_trip_and_failure_fallback(monkeypatch):
    a = CAGrad()
    g1, g2 = randg(3, seed=7), randg(3, seed=8)
    mtoframe.aggregate(a, g1)
    b = CAGrad()
    b.load_state_dict(a.state_dict())
    assert torch.equal(mtoframe.aggregate(a, g2), mtoframe.aggregate(b, g2))

    prev = a.weights.copy()

    def broken(*args, **kwargs):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(a.problem(3), "_run", broken)
    g3 = randg(3, seed=9)
    with pytest.warns(SolverWarning, match="cagrad.*forced failure.*previous weights") as rec:
        d = mtoframe.aggregate(a, g3)
        mtoframe.aggregate(a, g3)
    assert len(rec) == 1 and a.failures.count == 2
    np.testing.assert_array_equal(a.weights, prev)
    w = torch.from_numpy(prev)
    g0, gw = g3.mean(0), w @ g3
    torch.testing.assert_close(d, (g0 + 0.4 * g0.norm() / gw.norm() * gw) / (1 + 0.16))
    assert a.state_dict()["failures"] == 2


def test_training_continues_after_failures_and_logs(monkeypatch, tmp_path):
    trainer = factories.make_trainer([CAGrad()], log_dir=tmp_path, log_every=1)
    m = trainer.stack[0]

    def broken(*args, **kwargs):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(m.problem(3), "_run", broken)
    batch = factories.make_batch(trainer.model)
    with pytest.warns(SolverWarning):
        for _ in range(2):
            ctx = trainer.step(batch)
    assert ctx.scalars["solver/failures/cagrad"] == 2.0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    trainer.close()


def test_heads_receive_unweighted_gradients():
    factories.assert_heads_get_unweighted_gradients(CAGrad())


def test_options_validated():
    with pytest.raises(OptionError, match="rescale"):
        CAGrad(rescale=3)
    with pytest.raises(OptionError, match="'c'"):
        CAGrad(c=-0.1)
    with pytest.raises(OptionError, match="scale_by_tasks"):
        CAGrad(scale_by_tasks=1)


def test_missing_backend_fails_at_train_start(monkeypatch):
    import sys

    import mtoframe.solvers as solvers
    from mtoframe.errors import SolverError

    monkeypatch.setattr(solvers, "_COMPILED", {})
    monkeypatch.setitem(sys.modules, "clarabel", None)
    trainer = factories.make_trainer([CAGrad()])
    with pytest.raises(SolverError, match="mtoframe\\[solvers\\]"):
        trainer.start()


def test_overflowed_gram_matrix_is_a_counted_failure_not_a_silent_mean():
    m = CAGrad()
    gram = np.array([[np.inf, 1.0], [1.0, 2.0]])
    with pytest.warns(SolverWarning, match="non-finite Gram"):
        u = m.coefficients(gram, np.full(2, 0.5))
    assert m.failures.count == 1
    np.testing.assert_allclose(u, np.full(2, 0.5) / (1 + 0.4**2))


def test_max_norm_clips_the_update_as_the_nash_mtl_famo_copy():
    g = torch.randn(3, 12, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 5
    d = mtoframe.aggregate(CAGrad(scale_by_tasks=True), g)
    clipped = mtoframe.aggregate(CAGrad(scale_by_tasks=True, max_norm=1.0), g)
    assert float(d.norm()) > 1.0
    torch.testing.assert_close(clipped, d * (1.0 / (d.norm() + 1e-6)))
    assert CAGrad(max_norm=1.0).scale_degree is None and CAGrad().scale_degree == 1.0
    with pytest.raises(OptionError, match="max_norm"):
        CAGrad(max_norm=-1.0)
