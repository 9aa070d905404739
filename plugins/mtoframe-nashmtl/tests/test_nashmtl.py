"""Nash-MTL: closed forms, invariants, state, solver failure, trainer integration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import mtoframe
from mtoframe.errors import OptionError
from mtoframe.solvers import SolverWarning
from mtoframe.testing import factories
from mtoframe.testing.conformance import conformance_tests
from mtoframe_nashmtl import NashMTL

test_conformance = conformance_tests("nashmtl")
test_conformance_no_clip_every2 = conformance_tests("nashmtl", max_norm=0.0, update_weights_every=2)


def nash(**kw):
    return NashMTL(max_norm=0.0, **kw)


def residual(g: torch.Tensor, alpha: torch.Tensor) -> float:
    """max_t |α_t (GGᵀα)_t − 1|: zero exactly at the Nash bargaining solution."""
    return float((alpha * (g @ g.T @ alpha) - 1).abs().max())


def alpha_of(m: NashMTL, T: int) -> torch.Tensor:
    return torch.from_numpy(m.alpha[:T].copy())


@pytest.mark.parametrize("seed", range(4))
def test_two_task_closed_form(seed):
    g = torch.randn(2, 30, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g[1] = g[1] - (0.5 + 0.3 * seed) * g[0]  # a range of cosines, some negative
    m = nash()
    mtoframe.aggregate(m, g)
    n = g.norm(dim=1)
    cos = (g[0] @ g[1]) / (n[0] * n[1])
    expected = 1 / (n * torch.sqrt(1 + cos))
    torch.testing.assert_close(alpha_of(m, 2), expected, rtol=1e-4, atol=0)


def test_orthogonal_gradients_give_inverse_norms():
    g = torch.zeros(3, 6, dtype=torch.float64)
    g[0, 0], g[1, 1], g[2, 2:4] = 3.0, 0.5, torch.tensor([2.0, 2.0])
    m = nash()
    d = mtoframe.aggregate(m, g)
    torch.testing.assert_close(alpha_of(m, 3), 1 / g.norm(dim=1), rtol=1e-4, atol=0)
    torch.testing.assert_close(d.norm() ** 2, torch.tensor(3.0, dtype=torch.float64), rtol=1e-4, atol=0)


@pytest.mark.parametrize("T", [3, 5, 10])
def test_solution_satisfies_bargaining_equations(T):
    g = torch.randn(T, 40, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    m = nash()
    d = mtoframe.aggregate(m, g)
    alpha = alpha_of(m, T)
    assert bool((alpha > 0).all())
    assert residual(g, alpha) < 1e-3
    torch.testing.assert_close(d, alpha @ g)
    assert abs(float(d.norm() ** 2) - T) < 1e-2 * T


def test_update_invariant_to_per_task_rescaling():
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(4, 25, generator=gen, dtype=torch.float64)
    c = torch.tensor([0.01, 3.0, 250.0, 1.0], dtype=torch.float64)
    d1 = mtoframe.aggregate(nash(), g)
    d2 = mtoframe.aggregate(nash(), c[:, None] * g)
    torch.testing.assert_close(d2, d1, rtol=1e-3, atol=1e-3 * float(d1.norm()))


def has_common_ascent_direction(g: torch.Tensor) -> bool:
    """Whether some d has g_tᵀd ≥ 1 for every row (an LP): the bargaining problem is feasible
    exactly then."""
    from scipy.optimize import linprog

    a = g.numpy()
    res = linprog(np.zeros(a.shape[1]), A_ub=-a, b_ub=-np.ones(a.shape[0]), bounds=(None, None), method="highs")
    return res.status == 0


@pytest.mark.parametrize("case", list(factories.gradient_families()), ids=lambda c: c.name)
def test_gradient_families(case):
    """Finite output at every scale. A zero row is left out of the bargaining and keeps its
    previous (initial: 1) weight; the other rows satisfy the equations. Where no direction
    improves every task (rank-deficient families) no Nash solution exists: that is a counted
    solver failure and the previous weights are used."""
    m = nash()
    live = case.grads.norm(dim=1) > 0
    feasible = has_common_ascent_direction(case.grads[live] / case.grads[live].norm(dim=1, keepdim=True))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        d = mtoframe.aggregate(m, case.grads)
    assert bool(torch.isfinite(d).all())
    T = case.grads.shape[0]
    alpha = alpha_of(m, T)
    if not feasible:
        assert m.failures.count == 1 and [w.category for w in rec] == [SolverWarning]
        assert bool((alpha == 1.0).all())
        return
    assert m.failures.count == 0 and not rec
    assert residual(case.grads[live], alpha[live]) < 5e-3
    assert abs(float(d.norm() ** 2) - int(live.sum())) < 2e-2 * T
    assert bool((alpha[~live] == 1.0).all())


def test_max_norm_clips_update_only():
    g = 10 * torch.randn(3, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    free, clipped = nash(), NashMTL(max_norm=0.5)
    d_free = mtoframe.aggregate(free, g)
    d_clip = mtoframe.aggregate(clipped, g)
    torch.testing.assert_close(d_clip, d_free * 0.5 / (d_free.norm() + 1e-6))
    np.testing.assert_allclose(clipped.alpha, free.alpha)  # weights (heads) are not clipped


def test_update_weights_every_reuses_alpha():
    gen = torch.Generator().manual_seed(3)
    gs = [torch.randn(3, 15, generator=gen, dtype=torch.float64) for _ in range(4)]
    m = nash(update_weights_every=3)
    outs = []
    for g in gs:
        before = m.alpha.copy() if m.alpha is not None else None
        outs.append(mtoframe.aggregate(m, g))
        outs[-1] = (before, m.alpha.copy())
    assert outs[1][0] is not None and np.array_equal(outs[1][0], outs[1][1])  # call 1 reuses
    assert np.array_equal(outs[2][0], outs[2][1])  # call 2 reuses
    assert not np.array_equal(outs[3][0], outs[3][1])  # call 3 solves again
    # the reused weights are exactly those that solved the first matrix
    assert residual(gs[0], torch.from_numpy(outs[2][1])) < 1e-3


def test_warm_start_skips_solver_when_already_converged():
    g = torch.randn(3, 15, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    m = nash()
    d1 = mtoframe.aggregate(m, g)
    solves = m.solves
    d2 = mtoframe.aggregate(m, g)
    assert m.solves == solves
    torch.testing.assert_close(d1, d2)


def test_state_dict_round_trip_gives_identical_outputs():
    gen = torch.Generator().manual_seed(5)
    gs = [torch.randn(3, 12, generator=gen, dtype=torch.float64) for _ in range(5)]
    a = NashMTL(update_weights_every=2)
    for g in gs[:3]:
        mtoframe.aggregate(a, g)
    state = a.state_dict()
    assert state["calls"] == 3 and state["alpha"].shape == (3,)
    b = NashMTL(update_weights_every=2)
    b.load_state_dict(state)
    for g in gs[3:]:
        assert torch.equal(mtoframe.aggregate(a, g), mtoframe.aggregate(b, g))
    assert a.state_dict()["calls"] == b.state_dict()["calls"] == 5


def _force_failure(m: NashMTL, T: int, monkeypatch) -> None:
    problem = m.problem(T)

    def broken(*args, **kwargs):
        raise RuntimeError("forced failure")

    monkeypatch.setattr(problem, "_run", broken)


def test_forced_solver_failure_is_counted_warned_once_and_keeps_previous_alpha(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    m = nash()
    mtoframe.aggregate(m, torch.randn(3, 10, generator=gen, dtype=torch.float64))
    good = m.alpha.copy()
    _force_failure(m, 3, monkeypatch)
    g = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    with pytest.warns(SolverWarning, match="nashmtl.*forced failure.*previous weights") as rec:
        d = mtoframe.aggregate(m, g)
        mtoframe.aggregate(m, torch.randn(3, 10, generator=gen, dtype=torch.float64))
    assert len([w for w in rec if issubclass(w.category, SolverWarning)]) == 1
    assert m.failures.count == 2
    np.testing.assert_array_equal(m.alpha, good)
    torch.testing.assert_close(d, torch.from_numpy(good) @ g)
    assert m.state_dict()["failures"] == 2


def test_first_solve_failure_uses_ones(monkeypatch):
    m = nash()
    _force_failure(m, 2, monkeypatch)
    g = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(SolverWarning):
        d = mtoframe.aggregate(m, g)
    torch.testing.assert_close(d, g.sum(0))


def test_training_continues_and_logs_failures(monkeypatch, tmp_path):
    trainer = factories.make_trainer([NashMTL()], log_dir=tmp_path, log_every=1)
    m = trainer.stack[0]
    _force_failure(m, 3, monkeypatch)
    model = trainer.model
    batch = factories.make_batch(model)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(SolverWarning):
        for _ in range(3):
            ctx = trainer.step(batch)
    assert ctx.scalars["solver/failures/nashmtl"] == 3.0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    trainer.close()


def test_heads_receive_alpha_weighted_gradients():
    model = factories.make_vector_model()
    trainer = factories.make_trainer([NashMTL(max_norm=0.0)], model=model)
    batch = factories.make_batch(model)
    expected = factories.head_grads(model, batch)  # unweighted losses, before the step
    factories.step_keeping_grads(trainer, batch)
    alpha = trainer.stack[0].alpha
    for i, t in enumerate(model.heads):
        for p, e in zip(model.heads[t].parameters(), expected[t]):
            torch.testing.assert_close(p.grad, alpha[i] * e)


def test_partial_labels_keep_absent_task_weight():
    model = factories.make_vector_model()
    trainer = factories.make_trainer([NashMTL()], model=model)
    x, targets = factories.make_batch(model)
    trainer.step((x, targets))
    m = trainer.stack[0]
    a_before = m.alpha.copy()
    trainer.step((x, {"a": targets["a"], "c": targets["c"]}))
    assert m.alpha[1] == a_before[1]
    assert m.alpha[0] != a_before[0]


def test_options_validated():
    with pytest.raises(OptionError, match="optim_niter"):
        NashMTL(optim_niter=0)
    with pytest.raises(OptionError, match="max_norm"):
        NashMTL(max_norm=-1.0)
    with pytest.raises(OptionError, match="update_weights_every"):
        NashMTL(update_weights_every=1.5)


def test_problem_is_compiled_once_per_size():
    m = nash()
    gen = torch.Generator().manual_seed(8)
    for _ in range(3):
        mtoframe.aggregate(m, torch.randn(3, 9, generator=gen, dtype=torch.float64))
    mtoframe.aggregate(m, torch.randn(2, 9, generator=gen, dtype=torch.float64))
    assert sorted(m.problems) == [2, 3]
    assert m.problems[3].problem._cache.param_prog is not None  # DPP: canonicalised once, reused


def test_missing_backend_fails_at_train_start(monkeypatch):
    import sys

    import mtoframe.solvers as solvers
    from mtoframe.errors import SolverError

    monkeypatch.setattr(solvers, "_COMPILED", {})
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    trainer = factories.make_trainer([NashMTL()])
    with pytest.raises(SolverError, match="pip install cvxpy clarabel"):
        trainer.start()


def test_optim_niter_bounds_solves_and_every_iterate_is_feasible():
    """Each sub-problem's constraints are α_t (GGᵀα)_t ≥ 1, so even one iteration gives weights
    under which every task improves at least as much as at the solution."""
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(5, 30, generator=gen, dtype=torch.float64)
    m = nash(optim_niter=1)
    mtoframe.aggregate(m, g)
    assert m.solves == 1
    alpha = alpha_of(m, 5)
    assert float((alpha * (g @ g.T @ alpha)).min()) >= 1 - 1e-6
    full = nash()
    mtoframe.aggregate(full, g)
    assert 1 <= full.solves <= 20
