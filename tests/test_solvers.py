"""mtoframe.solvers: the cvxpy DPP wrapper and explicit failure handling."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from mtoframe.context import StepContext
from mtoframe.errors import SolverError
from mtoframe.solvers import CompiledProblems, ConvexProblem, FailureCounter, SolverWarning, compiled, nonzero_rows, require_cvxpy

cp = pytest.importorskip("cvxpy")


def projection(size: int):
    """argmin ‖x − p‖² over x ≥ 0: the solution is max(p, 0)."""

    def build(cp):
        x = cp.Variable(size)
        p = cp.Parameter(size, name="p")
        return cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0]), x, {"p": p}

    return build


def test_solves_and_resolves_with_new_parameters():
    prob = ConvexProblem(projection(3), name="proj")
    for p in (np.array([1.0, -2.0, 0.5]), np.array([-1.0, 3.0, -0.1])):
        res = prob.solve(p=p)
        assert res.ok and res.status == "optimal"
        np.testing.assert_allclose(res.value, np.maximum(p, 0), atol=1e-7)
    assert prob.solves == 2


def test_non_dpp_problem_is_rejected():
    def build(cp):
        x = cp.Variable(2)
        a, b = cp.Parameter(nonneg=True), cp.Parameter(nonneg=True)
        # a product of two parameters times a variable is not DPP (what the reference Nash-MTL does)
        return cp.Problem(cp.Minimize(a * b * cp.sum(x)), [x >= 0, cp.sum(x) == 1]), x, {"a": a, "b": b}

    with pytest.raises(SolverError, match="not DPP"):
        ConvexProblem(build, name="bad")


def test_infeasible_problem_is_a_failure_result_not_an_exception():
    def build(cp):
        x = cp.Variable(2)
        lo = cp.Parameter(name="lo")
        return cp.Problem(cp.Minimize(cp.sum(x)), [x >= lo, x <= 0]), x, {"lo": lo}

    prob = ConvexProblem(build, name="infeasible")
    res = prob.solve(lo=1.0)
    assert not res.ok and res.value is None and "infeasible" in res.reason
    assert prob.solve(lo=-1.0).ok


def test_exception_inside_solver_is_a_failure_result(monkeypatch):
    prob = ConvexProblem(projection(2), name="proj")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(prob, "_run", broken)
    res = prob.solve(p=np.ones(2))
    assert not res.ok and res.status == "error" and "RuntimeError: boom" in res.reason


def test_unknown_or_missing_parameter_is_an_error():
    prob = ConvexProblem(projection(2), name="proj")
    with pytest.raises(SolverError, match="exactly the parameters"):
        prob.solve(q=np.ones(2))
    with pytest.raises(SolverError, match="exactly the parameters"):
        prob.solve()


def test_compiled_is_shared_per_key():
    a = compiled(("test-proj", 4), projection(4), name="proj")
    assert compiled(("test-proj", 4), projection(4), name="proj") is a
    assert compiled(("test-proj", 5), projection(5), name="proj") is not a


def test_compiled_problems_take_the_shared_cache_and_record_sizes():
    family = CompiledProblems("test-proj", projection)
    assert family.for_tasks(4) is compiled(("test-proj", 4), projection(4), name="proj")
    family.for_tasks(2)
    assert sorted(family) == [2, 4] and family[4] is family.for_tasks(4)


def test_missing_backend_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    with pytest.raises(SolverError, match="pip install cvxpy clarabel"):
        require_cvxpy()
    monkeypatch.setitem(sys.modules, "cvxpy", cp)
    monkeypatch.setitem(sys.modules, "clarabel", None)
    with pytest.raises(SolverError, match="mtoframe\\[solvers\\]"):
        require_cvxpy()


def test_failure_counter_warns_once_and_logs_count():
    counter = FailureCounter("demo", "keeping the previous weights")
    with pytest.warns(SolverWarning, match="demo: solver failed \\(first\\); keeping the previous weights"):
        counter.record("first")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counter.record("second")
    assert counter.count == 2
    ctx = StepContext(tasks=("a",), logging=True)
    counter.log(ctx)
    assert ctx.scalars["solver/failures/demo"] == 2.0


def test_nonzero_rows_is_relative():
    k = np.diag([1e16, 1e-2, 0.0])
    assert nonzero_rows(k).tolist() == [True, False, False]
    assert nonzero_rows(np.diag([1e-30, 1e-31])).tolist() == [True, True]
    assert nonzero_rows(np.zeros((2, 2))).tolist() == [False, False]


@pytest.mark.parametrize("seed", range(3))
def test_affine_fast_path_equals_cvxpy_solve(seed):
    """The recorded affine map from parameters to solver data reproduces Problem.solve."""

    def build(cp):
        w = cp.Variable(3, nonneg=True)
        b = cp.Parameter(3, name="b")
        r = cp.Parameter((3, 3), name="r")
        return cp.Problem(cp.Minimize(b @ w + cp.norm(r @ w, 2)), [cp.sum(w) == 1]), w, {"b": b, "r": r}

    fast = ConvexProblem(build, name="fast")
    slow = ConvexProblem(build, name="slow", fast=False)
    rng = np.random.default_rng(seed)
    b, r = rng.standard_normal(3), rng.standard_normal((3, 3))
    x, y = fast.solve(b=b, r=r), slow.solve(b=b, r=r)
    assert x.ok and y.ok and x.status == y.status
    np.testing.assert_allclose(x.value, y.value, atol=1e-7)
    # the fast path really skips cvxpy's per-solve canonicalisation
    assert fast.problem._cache.param_prog is not None and slow.problem._cache.param_prog is not None
