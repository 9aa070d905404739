"""FairGrad: fixed point, α = 1 equals Nash-MTL, large α equalises improvements, variants,
scale law, state, solver failure, trainer integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

import mtoframe
import mtoframe_fairgrad.fairgrad as fairgrad_module
from mtoframe.errors import OptionError
from mtoframe.solvers import SolverWarning
from mtoframe.testing import factories
from mtoframe.testing.conformance import conformance_tests
from mtoframe_fairgrad import FairGrad

test_conformance = conformance_tests("fairgrad")
test_conformance_official = conformance_tests("fairgrad", alpha=1.0, variant="official")


def randg(T: int, P: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def fixed_point_residual(g: torch.Tensor, w: np.ndarray, alpha: float) -> float:
    k = (g @ g.T).numpy()
    target = w ** (-1.0 / alpha)
    return float(np.linalg.norm(k @ w - target) / np.linalg.norm(target))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("T", [2, 3, 5, 10])
def test_fixed_point_residual_is_small(alpha, T):
    g = randg(T, P=40, seed=T)
    m = FairGrad(alpha=alpha)
    d = mtoframe.aggregate(m, g)
    assert bool((m.weights > 0).all())
    assert fixed_point_residual(g, m.weights, alpha) < 1e-5
    torch.testing.assert_close(d, torch.from_numpy(m.weights) @ g)


@pytest.mark.parametrize("seed", range(3))
def test_alpha_one_is_nash_closed_form_for_two_tasks(seed):
    g = randg(2, seed=seed)
    g[1] = g[1] - 0.6 * g[0]
    m = FairGrad(alpha=1.0)
    mtoframe.aggregate(m, g)
    n = g.norm(dim=1)
    cos = (g[0] @ g[1]) / (n[0] * n[1])
    np.testing.assert_allclose(m.weights, (1 / (n * torch.sqrt(1 + cos))).numpy(), rtol=1e-6)


@pytest.mark.parametrize("T", [3, 5, 10])
def test_alpha_one_equals_nashmtl_weights(T):
    nash_plugin = pytest.importorskip("mtoframe_nashmtl")
    g = randg(T, P=40, seed=100 + T)
    f = FairGrad(alpha=1.0)
    n = nash_plugin.NashMTL(max_norm=0.0)
    d_f = mtoframe.aggregate(f, g)
    d_n = mtoframe.aggregate(n, g)
    np.testing.assert_allclose(f.weights, n.alpha, rtol=1e-3)
    torch.testing.assert_close(d_f, d_n, rtol=0, atol=1e-3 * float(d_n.norm()))


def test_large_alpha_equalises_improvements():
    g = randg(4, seed=3)
    g[1] = -0.5 * g[0] + 0.5 * g[1]
    d = mtoframe.aggregate(FairGrad(alpha=1e4), g)
    improvements = g @ d
    assert float(improvements.max() / improvements.min()) < 1.01


def test_scale_law():
    """GGᵀw = w^(−1/α) gives w(sG) = s^(−2α/(α+1)) w(G)."""
    g = randg(3, seed=4)
    for alpha in (0.5, 2.0):
        a, b = FairGrad(alpha=alpha), FairGrad(alpha=alpha)
        mtoframe.aggregate(a, g)
        mtoframe.aggregate(b, 1e6 * g)
        np.testing.assert_allclose(b.weights, a.weights * 1e6 ** (-2 * alpha / (alpha + 1)), rtol=1e-6)


def test_official_variant_scales_by_tasks_and_clips():
    g = randg(3, seed=5)
    d_lib = mtoframe.aggregate(FairGrad(alpha=2.0), g)
    d_off = mtoframe.aggregate(FairGrad(alpha=2.0, variant="official"), g)
    big = 3 * d_lib
    assert float(big.norm()) > 1.0
    torch.testing.assert_close(d_off, big / (big.norm() + 1e-6))
    # ‖d‖ scales as s^(1 − 2α/(α+1)) = s^(−1/3): large gradients give a small, unclipped update
    large = 1e6 * g
    small_update = 3 * mtoframe.aggregate(FairGrad(), large)
    assert float(small_update.norm()) < 1.0
    torch.testing.assert_close(mtoframe.aggregate(FairGrad(variant="official"), large), small_update)


def has_common_ascent_direction(g: torch.Tensor) -> bool:
    a = (g / g.norm(dim=1, keepdim=True)).numpy()
    res = linprog(np.zeros(a.shape[1]), A_ub=-a, b_ub=-np.ones(a.shape[0]), bounds=(None, None), method="highs")
    return res.status == 0


@pytest.mark.parametrize("case", list(factories.gradient_families()), ids=lambda c: c.name)
def test_gradient_families(case):
    """Finite output at every scale; a zero row gets weight 0 and the others solve the
    equations; where no positive solution exists (no direction improves every task) the
    failure is counted and the starting weights are used."""
    m = FairGrad()
    live = case.grads.norm(dim=1) > 0
    feasible = has_common_ascent_direction(case.grads[live])
    with pytest.warns(SolverWarning) if not feasible else _no_solver_warning():
        d = mtoframe.aggregate(m, case.grads)
    assert bool(torch.isfinite(d).all())
    if feasible:
        assert m.failures.count == 0
        assert fixed_point_residual(case.grads[live], m.weights[live.numpy()], 2.0) < 1e-3
        torch.testing.assert_close(d, torch.from_numpy(np.where(live.numpy(), m.weights, 0.0)) @ case.grads)
    else:
        assert m.failures.count == 1


class _no_solver_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", SolverWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_state_dict_round_trip():
    a = FairGrad()
    mtoframe.aggregate(a, randg(3, seed=6))
    b = FairGrad()
    b.load_state_dict(a.state_dict())
    g = randg(3, seed=7)
    assert torch.equal(mtoframe.aggregate(a, g), mtoframe.aggregate(b, g))
    np.testing.assert_array_equal(a.weights, b.weights)


def test_forced_failure_counted_warned_once_previous_weights(monkeypatch):
    m = FairGrad()
    mtoframe.aggregate(m, randg(3, seed=8))
    prev = m.weights.copy()

    def broken(*args, **kwargs):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(fairgrad_module, "least_squares", broken)
    g = randg(3, seed=9)
    with pytest.warns(SolverWarning, match="fairgrad.*forced failure.*previous weights") as rec:
        d = mtoframe.aggregate(m, g)
        mtoframe.aggregate(m, g)
    assert len(rec) == 1 and m.failures.count == 2
    np.testing.assert_array_equal(m.weights, prev)
    torch.testing.assert_close(d, torch.from_numpy(prev) @ g)
    assert m.state_dict()["failures"] == 2


def test_training_continues_after_failures_and_logs(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(fairgrad_module, "least_squares", broken)
    trainer = factories.make_trainer([FairGrad()], log_dir=tmp_path, log_every=1)
    batch = factories.make_batch(trainer.model)
    before = [p.detach().clone() for p in trainer.model.encoder.parameters()]
    with pytest.warns(SolverWarning):
        for _ in range(2):
            ctx = trainer.step(batch)
    assert ctx.scalars["solver/failures/fairgrad"] == 2.0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.encoder.parameters()))
    trainer.close()


def test_official_heads_receive_unweighted_gradients():
    factories.assert_heads_get_unweighted_gradients(FairGrad(variant="official"))


def _libmtl_fairgrad_weights(k: np.ndarray, alpha: float) -> np.ndarray:
    """LibMTL's solve, written from its formula: bounded least squares of ``K w − (1/w)^(1/α)``
    from ``1/T`` on the raw Gram matrix."""
    from scipy.optimize import least_squares

    T = k.shape[0]
    res = least_squares(lambda w: k @ w - (1.0 / w) ** (1.0 / alpha), np.full(T, 1.0 / T), bounds=(0, np.inf),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return res.x


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_libmtl_step_equals_libmtl_shared_and_heads(alpha):
    """One trainer step equals LibMTL's: shared parameters get ``Σ w_t g_t`` and every head the
    gradient of ``w_t L_t`` (LibMTL back-propagates ``Σ w_t L_t``), in float64."""
    model = factories.make_vector_model()
    batch = factories.make_batch(model)
    x, targets = batch
    shared = list(model.encoder.parameters())
    z = model.encoder(x)
    losses = [((model.heads[t](z) - targets[t]) ** 2).mean() for t in model.heads]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses]
    G = torch.stack(rows)
    w = _libmtl_fairgrad_weights((G @ G.T).numpy(), alpha)
    heads_expected = {t: [wt * g for g in torch.autograd.grad(loss, list(model.heads[t].parameters()), retain_graph=True)]
                      for wt, t, loss in zip(w, model.heads, losses)}
    trainer = factories.make_trainer([FairGrad(alpha=alpha)], model=model)
    factories.step_keeping_grads(trainer, batch)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, torch.from_numpy(w) @ G, rtol=1e-6, atol=1e-9)
    for t in model.heads:
        for p, e in zip(model.heads[t].parameters(), heads_expected[t]):
            torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-9)


def test_options_validated():
    with pytest.raises(OptionError, match="alpha"):
        FairGrad(alpha=0.0)
    with pytest.raises(OptionError, match="variant"):
        FairGrad(variant="paper")
