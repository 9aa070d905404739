from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe import SeededOrders
from mtoframe.testing.factories import gradient_families

CASES = list(gradient_families())


def pcgrad_loop(G, orders):
    """Algorithm 1 of the paper written directly on the rows, in float64."""
    out = []
    for i in range(G.shape[0]):
        gi = G[i].clone()
        for j in orders[i]:
            dot = gi @ G[j]
            if dot < 0 and G[j] @ G[j] > 0:
                gi = gi - dot / (G[j] @ G[j]) * G[j]
        out.append(gi)
    return torch.stack(out).sum(0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_equals_hand_written_loop(case):
    m = mtoframe.create("pcgrad", seed=3)
    rng = SeededOrders(3)
    for _ in range(2):  # also checks that the generator advances identically
        d = mtoframe.aggregate(m, case.grads)
        ref = pcgrad_loop(case.grads, rng.orders(case.grads.shape[0]))
        scale = float(case.grads.norm())
        assert float((d - ref).norm()) <= 1e-10 * scale


def test_two_task_closed_form_and_no_conflict_after():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    g1, g2 = g
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g1 @ g2) / (g1 @ g1) * g1
    assert torch.allclose(mtoframe.aggregate("pcgrad", g), p1 + p2)
    assert p1 @ g2 == pytest.approx(0.0) and p2 @ g1 == pytest.approx(0.0)


def test_mean_reduction_is_sum_over_T():
    case = CASES[8]
    s = mtoframe.aggregate(mtoframe.create("pcgrad", seed=1), case.grads)
    m = mtoframe.aggregate(mtoframe.create("pcgrad", seed=1, reduction="mean"), case.grads)
    assert torch.allclose(m, s / case.grads.shape[0])


def test_non_conflicting_gradients_unchanged():
    g = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.0, 0.3, 1.0]])
    assert torch.allclose(mtoframe.aggregate("pcgrad", g), g.sum(0))


@pytest.mark.parametrize("T", [2, 3, 5, 10, 12, 13, 20])
@pytest.mark.parametrize("seed", range(3))
def test_gram_space_equals_the_vector_form_on_random_matrices(T, seed):
    # random float64 rows, many of them conflicting: the T×T coefficient form is the P-space loop
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(T, 40, generator=gen, dtype=torch.float64) * torch.logspace(-2, 2, T, dtype=torch.float64)[:, None]
    m, rng = mtoframe.create("pcgrad", seed=seed), SeededOrders(seed)
    for _ in range(2):
        d = mtoframe.aggregate(m, g)
        ref = pcgrad_loop(g, rng.orders(T))
        assert float((d - ref).norm()) <= 1e-6 * float(ref.norm())


@pytest.mark.parametrize("T", [3, 8, 12])
def test_the_float_loop_equals_the_vectorised_form(T):
    # the two forms of pcgrad_coefficients on either side of PYTHON_MAX_TASKS, on the same Gram matrix
    from mtoframe_gradmethods import pcgrad

    gen = torch.Generator().manual_seed(T)
    sign = torch.tensor([(-1.0) ** i for i in range(T)], dtype=torch.float64)[:, None]
    shared = torch.randn(1, 30, generator=gen, dtype=torch.float64)
    g = torch.randn(T, 30, generator=gen, dtype=torch.float64) + 2.0 * sign * shared
    K = g @ g.T
    orders = SeededOrders(T).orders(T)
    floats = pcgrad.pcgrad_coefficients(K, orders)
    limit = pcgrad.PYTHON_MAX_TASKS
    try:
        pcgrad.PYTHON_MAX_TASKS = 0
        vectorised = pcgrad.pcgrad_coefficients(K, orders)
    finally:
        pcgrad.PYTHON_MAX_TASKS = limit
    assert not torch.equal(floats, torch.eye(T))  # the case has conflicts to project
    assert torch.allclose(floats, vectorised, rtol=1e-12, atol=1e-12)
