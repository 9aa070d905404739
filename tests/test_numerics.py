"""KKT and closed-form checks of mtoframe.numerics."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtoframe.errors import SolverError
from mtoframe.numerics import (
    clip_norm,
    cosine_matrix,
    gram,
    min_norm_point,
    min_norm_point_fw,
    nnqp,
    normalised_gram,
    project_simplex,
)
from mtoframe.testing.factories import gradient_families

CASES = list(gradient_families(tasks=(2, 3, 5, 10), dim=20))


def _brute_min_norm(K: torch.Tensor) -> float:
    """Smallest ‖Gᵀw‖² over every support's affine minimiser that lies in the simplex."""
    T = K.shape[0]
    best = float(K.diagonal().min())
    for r in range(2, T + 1):
        for s in itertools.combinations(range(T), r):
            idx = list(s)
            A = torch.zeros(r + 1, r + 1, dtype=K.dtype)
            A[:r, :r] = K[idx][:, idx]
            A[:r, r] = 1
            A[r, :r] = 1
            b = torch.zeros(r + 1, dtype=K.dtype)
            b[r] = 1
            full = torch.linalg.lstsq(A, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
            sol = full[:r]
            # singular systems (duplicate rows) may have no exact solution: skip those supports
            if torch.allclose(A @ full, b, atol=1e-9) and (sol >= -1e-12).all():
                w = torch.zeros(T, dtype=K.dtype)
                w[idx] = sol
                best = min(best, float(w @ K @ w))
    return best


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_min_norm_point_kkt(case):
    K = gram(case.grads)
    res = min_norm_point(K)
    w = res.weights
    assert res.converged
    assert torch.isfinite(w).all()
    assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    Kn = normalised_gram(K)
    kw = Kn @ w
    val = w @ kw
    # optimality: no vertex decreases the objective, and the support is on the minimal level
    assert (kw >= val - 1e-9).all()
    assert torch.allclose(kw[w > 1e-9], val.expand_as(kw[w > 1e-9]), atol=1e-9)


@pytest.mark.parametrize("case", [c for c in CASES if c.grads.shape[0] <= 5], ids=lambda c: c.name)
def test_min_norm_point_matches_support_enumeration(case):
    K = normalised_gram(gram(case.grads))
    w = min_norm_point(K).weights
    assert float(w @ K @ w) == pytest.approx(_brute_min_norm(K), abs=1e-10)


def test_min_norm_point_two_vectors_closed_form():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    # min over γ of ‖γ g1 + (1−γ) g2‖²: γ = 4/5
    w = min_norm_point(gram(g)).weights
    assert torch.allclose(w, torch.tensor([0.8, 0.2], dtype=torch.float64))


def test_min_norm_point_zero_in_hull():
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    w = min_norm_point(gram(g)).weights
    assert float(torch.linalg.vector_norm(w @ g)) < 1e-12


def test_min_norm_point_rejects_nonfinite():
    with pytest.raises(SolverError, match="non-finite"):
        min_norm_point(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))


def test_frank_wolfe_approaches_exact():
    for case in CASES[:14]:
        K = normalised_gram(gram(case.grads))
        exact = min_norm_point(K).weights
        fw = min_norm_point_fw(K, max_iter=500)
        assert float(fw @ K @ fw) == pytest.approx(float(exact @ K @ exact), abs=1e-3)


def _simplex_vi_holds(v, p):
    # p = Π(v) iff ⟨v − p, y − p⟩ ≤ 0 for every y in the simplex, i.e. for every vertex
    r = v - p
    return bool((r - (r @ p) <= 1e-12).all())


def test_project_simplex_variational_inequality():
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 3, 7, 20):
        for scale in (1e-3, 1.0, 1e3):
            v = torch.randn(n, generator=g, dtype=torch.float64) * scale
            p = project_simplex(v)
            assert (p >= 0).all() and float(p.sum()) == pytest.approx(1.0, abs=1e-12)
            assert _simplex_vi_holds(v, p)


def test_project_simplex_closed_forms_and_batch():
    v = torch.tensor([[0.2, 0.3, 0.5], [2.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    p = project_simplex(v)
    assert torch.allclose(p[0], v[0])  # already on the simplex
    assert torch.allclose(p[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(p[2], torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_nnqp_kkt_dual_cone(case):
    # UPGrad's problem: project each g_i onto {v: Gv >= 0}, i.e. q = K e_i
    K = gram(case.grads)
    res = nnqp(K, K)
    assert res.converged
    X = res.x
    scale = float(K.diagonal().max())
    grad = (K @ X + K) / scale
    assert (X >= 0).all()
    assert (grad >= -1e-8).all()
    assert float((X * grad).abs().max()) * scale / max(scale, 1e-300) < 1e-7 * (1 + float(X.abs().max()))
    # the projections are in the dual cone
    V = (torch.eye(K.shape[0], dtype=K.dtype) + X).T @ case.grads
    assert (case.grads @ V.T >= -1e-8 * scale).all()


def test_nnqp_closed_form_unconstrained_and_bound():
    K = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    q = torch.tensor([-2.0, 3.0], dtype=torch.float64)
    # coordinate 0 interior: x0 = 1; coordinate 1 at the bound
    assert torch.allclose(nnqp(K, q).x, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_gram_cosine_and_clip():
    g = torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    K = gram(g)
    assert torch.allclose(K, g @ g.T)
    c = cosine_matrix(K)
    assert c[0, 1] == pytest.approx(0.8) and c[0, 0] == pytest.approx(1.0) and c[2, 0] == 0.0
    v = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert float(torch.linalg.vector_norm(clip_norm(v, 1.0))) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(clip_norm(v, 10.0), v)
    assert torch.equal(clip_norm(v, 0.0), v)
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p.grad = v.clone()
    torch.nn.utils.clip_grad_norm_([p], 1.0)
    assert torch.allclose(clip_norm(v, 1.0), p.grad, rtol=0, atol=1e-15)


def test_nnqp_columns_at_once_equal_one_at_a_time():
    # UPGrad's T right-hand sides solved together match each solved alone (rank-deficient K,
    # conflicting rows: many active constraints)
    from mtoframe.numerics import nnqp

    g = torch.Generator().manual_seed(4)
    G = torch.randn(12, 8, generator=g, dtype=torch.float64)
    G[6:] = -0.8 * G[:6] + 0.1 * torch.randn(6, 8, generator=g, dtype=torch.float64)
    K = G @ G.T
    together = nnqp(K, K)
    assert together.converged
    for c in range(12):
        alone = nnqp(K, K[:, c])
        torch.testing.assert_close(together.x[:, c], alone.x, rtol=0, atol=1e-9)
    x = together.x
    grad = K @ x + K
    assert (x >= 0).all() and (grad >= -1e-8 * K.diagonal().max()).all()
    assert float((x * grad).abs().max()) <= 1e-8 * float(K.diagonal().max())


def test_min_norm_point_interior_solution_is_wolfes(monkeypatch):
    import mtoframe.numerics as numerics

    g = torch.Generator().manual_seed(2)
    G = (0.5 * torch.randn(1, 2000, generator=g, dtype=torch.float64)
         + torch.randn(8, 2000, generator=g, dtype=torch.float64))
    K = G @ G.T
    fast = numerics.min_norm_point(K)
    assert fast.iterations == 0 and fast.converged and (fast.weights > 0).all()
    monkeypatch.setattr(numerics, "_interior_minimiser", lambda K, tol: None)
    wolfe = numerics.min_norm_point(K)
    assert wolfe.iterations > 0
    torch.testing.assert_close(fast.weights, wolfe.weights, rtol=0, atol=1e-10)


def test_nnqp_falls_back_to_the_active_set_loop_when_the_first_guess_fails():
    # random right-hand sides: the guess {j: q_j < 0} is wrong for most columns, so the batched
    # Lawson-Hanson loop does the work; the answer is the unique KKT point (K positive definite)
    import numpy as np

    from mtoframe.numerics import _nnqp_columns, nnqp

    g = torch.Generator().manual_seed(7)
    A = torch.randn(9, 9, generator=g, dtype=torch.float64)
    K = A @ A.T + 0.1 * torch.eye(9, dtype=torch.float64)
    Q = torch.randn(9, 16, generator=g, dtype=torch.float64) * 3
    res = nnqp(K, Q)
    top = float(K.diagonal().max())
    _, its, ok = _nnqp_columns(K.numpy() / top, Q.numpy() / top, 1e-10, 300)
    assert ok.all() and (its > 1).sum() >= 4
    x, grad = res.x, K @ res.x + Q
    assert res.converged and (x >= 0).all()
    assert (grad >= -1e-8).all() and float((x * grad).abs().max()) <= 1e-8
    for c in range(16):  # on each support, the stationarity equations of the unique minimiser hold exactly
        free = np.flatnonzero(x[:, c].numpy() > 0)
        if free.size:
            sub = torch.linalg.solve(K[free][:, free], -Q[free, c])
            torch.testing.assert_close(x[free, c], sub, rtol=0, atol=1e-9)


def _dual_cone_projections(K: torch.Tensor, G: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """UPGrad's projections ``v_i = Gᵀ(e_i + x_i)``, one per row: unique even where ``x`` is not."""
    return (torch.eye(K.shape[0], dtype=K.dtype) + x).T @ G


@pytest.mark.parametrize("dim", [25, 60, 400], ids=["rank-deficient", "square-ish", "wide"])
def test_nnqp_start_and_block_rounds_change_the_path_not_the_answer(dim, monkeypatch):
    # UPGrad's dual-cone problem at T = 40 with half the pairs of gradients conflicting (tens of
    # active constraints per column). The reference is the plain Lawson-Hanson loop from x = 0
    # (an empty start, no block rounds); every other path must reach the same projections and
    # KKT point.
    import mtoframe.numerics as numerics

    T = 40
    G = torch.randn(T, dim, generator=torch.Generator().manual_seed(11 + dim), dtype=torch.float64)
    K = G @ G.T
    assert float((K < 0).double().mean()) > 0.45
    scale = float(K.diagonal().max())
    empty = torch.zeros(T, T, dtype=torch.bool)
    with monkeypatch.context() as plain:
        plain.setattr(numerics, "BLOCK_ROUNDS", 0)
        ref = nnqp(K, K, start=empty)
        guessed = nnqp(K, K)  # the shrunk default guess alone
    assert ref.converged
    v_ref = _dual_cone_projections(K, G, ref.x)
    rand = torch.rand(T, T, generator=torch.Generator().manual_seed(5)) < 0.5
    starts = {"default": None, "empty": empty, "all": torch.ones(T, T, dtype=torch.bool), "random": rand,
              "own": ref.x > 0}
    runs = {name: nnqp(K, K, start=start) for name, start in starts.items()}
    for name, res in [*runs.items(), ("guess-only", guessed)]:
        assert res.converged, name
        x, grad = res.x, K @ res.x + K
        assert (x >= 0).all() and (grad >= -1e-9 * scale).all(), name
        assert float((x * grad).abs().max()) <= 1e-9 * scale * (1 + float(x.abs().max())), name
        torch.testing.assert_close(_dual_cone_projections(K, G, x), v_ref, rtol=0, atol=1e-10 * scale ** 0.5)
        if dim > T:  # K positive definite: the minimiser itself is unique
            torch.testing.assert_close(x, ref.x, rtol=0, atol=1e-10)
    # the solution's own support is accepted by one batched solve per column; the default guess,
    # shrunk to a positive solution, and then the block rounds each save major cycles
    assert runs["own"].iterations == T
    assert runs["default"].iterations < guessed.iterations < 0.8 * ref.iterations


def test_nnqp_start_must_be_a_boolean_of_q_shape():
    K = torch.eye(3, dtype=torch.float64)
    with pytest.raises(SolverError, match=r"start must be a boolean tensor of q's shape \(3, 3\)"):
        nnqp(K, K, start=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(SolverError, match=r"got torch\.float64"):
        nnqp(K, K, start=torch.ones(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("T", [3, 12])
def test_blocked_gram_equals_one_product(T):
    # one thread and a matrix beyond GRAM_BLOCKED_MIN_BYTES take the column-block path; it is the
    # same sum in another order: equal to float64 round-off
    from mtoframe import numerics

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        P = numerics.GRAM_BLOCKED_MIN_BYTES // (8 * T) + 12345  # not a multiple of the block width
        g = torch.randn(T, P, dtype=torch.float64, generator=torch.Generator().manual_seed(T))
        assert numerics._blocked(g)
        assert P > 2 * numerics.GRAM_BLOCK_BYTES // (8 * T)  # several blocks, and a short last one
        k = gram(g)
    finally:
        torch.set_num_threads(threads)
    ref = g @ g.T
    assert torch.allclose(k, ref, rtol=1e-12, atol=1e-9)


def test_gram_keeps_one_product_where_blocks_do_not_pay():
    from mtoframe import numerics

    big = torch.zeros(3, numerics.GRAM_BLOCKED_MIN_BYTES // 4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert not numerics._blocked(big)  # MKL splits one product over the threads itself
        torch.set_num_threads(1)
        assert numerics._blocked(big)
        assert not numerics._blocked(big[:2])  # 2 rows: one product was faster
        assert not numerics._blocked(torch.zeros(16, big.shape[1]))
        assert not numerics._blocked(big[:, :1000])  # small: in cache either way
        assert not numerics._blocked(big.clone().requires_grad_())  # autograd keeps the one product
    finally:
        torch.set_num_threads(threads)
