"""The GramWeighting base: state sizing and indexing, logging, failures, the deferred band check;
and the shared helpers that moved into core."""

from __future__ import annotations

import copy
import functools
import math
import random
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch

import mtoframe
import mtoframe.numerics
from mtoframe import GramWeighting, StateSpec, StepContext, TaskState, Weights
from mtoframe.scaling import OutOfBand, check_deferred, scale_exponent


class Counted(GramWeighting):
    """Unit-norm rows summed; counts, per task, the steps it was present in."""

    name = "counted"
    summary = "test fixture"
    fallback = "using unit weights"
    state_spec: ClassVar[Mapping[str, StateSpec]] = {"seen": StateSpec(init=0.0),
                                                     "pair": StateSpec(init=-1.0, pairwise=True)}

    @property
    def scale_degree(self) -> float | None:
        return 0.0

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> torch.Tensor | Weights:
        state["seen"] = state["seen"] + 1
        state["pair"] = gram / gram.diagonal().max()
        w = gram.diagonal().clamp_min(1e-300).rsqrt()
        if not torch.isfinite(gram).all():
            self.failures.record("non-finite Gram matrix")
        return Weights(w, 2 * w)


def entry(m: GramWeighting, name: str) -> torch.Tensor:
    value = m.state_entry(name)
    assert value is not None
    return value


def rows(T: int, P: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_update_is_the_weighted_sum_and_heads_get_their_weights() -> None:
    g = rows(3)
    ctx = StepContext(tasks=("a", "b", "c"), losses=torch.ones(3, dtype=torch.float64))
    ctx.grads = g
    m = Counted()
    m.on_shared_grads(ctx=ctx)
    w = 1 / g.norm(dim=1)
    torch.testing.assert_close(ctx.update, w @ g)
    torch.testing.assert_close(ctx.head_weights, 2 * w)


def test_state_is_sized_over_all_tasks_and_indexed_by_task_ids() -> None:
    m = Counted()
    names = ["a", "b", "c", "d"]
    mtoframe.aggregate(m, rows(4), all_tasks=names)
    g = rows(2, seed=1)
    mtoframe.aggregate(m, g, task_ids=[3, 1], all_tasks=names)
    assert entry(m, "seen").tolist() == [1.0, 2.0, 1.0, 2.0]
    pair = entry(m, "pair")
    k = g @ g.T
    # row i of the batch is task task_ids[i]: the 2x2 block lands at (3, 1) x (3, 1)
    torch.testing.assert_close(pair[[3, 1]][:, [3, 1]], k / k.diagonal().max())
    assert pair[0, 2] != -1.0 and pair[0, 1] != -1.0  # written by the full first step
    assert pair.shape == (4, 4)


def test_another_task_list_starts_afresh() -> None:
    m = Counted()
    mtoframe.aggregate(m, rows(3))
    mtoframe.aggregate(m, rows(5))
    assert entry(m, "seen").tolist() == [1.0] * 5


def test_state_dict_round_trip_fresh_state_and_reset() -> None:
    m = Counted()
    assert m.state_dict()["seen"].numel() == 0
    fresh = Counted()
    fresh.load_state_dict(Counted().state_dict())  # a fresh instance's empty state loads
    assert fresh.task_state is None
    for s in range(3):
        mtoframe.aggregate(m, rows(3, seed=s))
    state = copy.deepcopy(m.state_dict())
    assert set(state) == {"seen", "pair", "failures"}
    other = Counted()
    other.load_state_dict(state)
    assert torch.equal(entry(other, "seen"), entry(m, "seen"))
    with pytest.raises(ValueError, match="must have keys"):
        other.load_state_dict({"seen": state["seen"]})
    m.reset()
    assert m.task_state is None and m.failures.count == 0


def test_weights_are_logged_per_task_and_failures_counted_once_warned() -> None:
    m = Counted()
    g = rows(2)
    g[0, 0] = math.inf
    ctx = StepContext(tasks=("x", "y"), losses=torch.ones(2, dtype=torch.float64), logging=True)
    ctx.grads = g
    with pytest.warns(mtoframe.SolverWarning, match="counted: solver failed .*using unit weights"):
        m.on_shared_grads(ctx=ctx)
    assert set(ctx.scalars) == {"counted/weight/x", "counted/weight/y", "solver/failures/counted"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mtoframe.aggregate(m, g)  # counted again, not warned again
    assert m.failures.count == 2 and m.state_dict()["failures"] == 2


def test_wrong_weight_shape_is_reported() -> None:
    class Bad(Counted):
        name = "bad"

        def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> torch.Tensor:
            return torch.ones(gram.shape[0] + 1, dtype=gram.dtype)

    with pytest.raises(RuntimeError, match=r"bad: weigh\(\) returned shape \(4,\), expected \(3,\)"):
        mtoframe.aggregate(Bad(), rows(3))


def test_a_transform_alone_sums_its_rows_and_edits_them_in_a_stack() -> None:
    class Swap(GramWeighting):
        name = "swap"
        summary = "test fixture"
        roles = mtoframe.Role.TRANSFORM

        def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> torch.Tensor:
            return torch.tensor([[0.0, 2.0], [1.0, 0.0]], dtype=gram.dtype)

    g = rows(2)
    torch.testing.assert_close(mtoframe.aggregate(Swap(), g), 2 * g[1] + g[0])
    m = Swap()
    m.check_stack([m])
    ctx = StepContext(tasks=("a", "b"), losses=torch.ones(2, dtype=torch.float64))
    ctx.grads = g
    m.on_shared_grads(ctx=ctx)
    assert ctx.update is None
    torch.testing.assert_close(ctx.grads, torch.stack([2 * g[1], g[0]]))


# -- the deferred band check of mtoframe.aggregate -------------------------------------------------


def gram_of(g: torch.Tensor) -> torch.Tensor:
    return g @ g.T


@pytest.mark.parametrize("P", [1, 3, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_certificate_never_accepts_a_matrix_the_exact_check_would_rescale(P: int, dtype: torch.dtype) -> None:
    from mtoframe import scaling

    gen = torch.Generator().manual_seed(P)
    for exponent in range(-40, 41, 1):
        for sparse in (False, True):
            g = torch.randn(3, P, generator=gen, dtype=dtype) * 2.0**exponent
            if sparse:  # one large entry: the norm bound is loosest
                g = torch.zeros_like(g)
                g[1, -1] = 1.3 * 2.0**exponent
            token = scaling._DEFERRED.set(g)
            try:
                check_deferred(g, functools.partial(gram_of, g))
                certified = True
            except OutOfBand:
                certified = False
            finally:
                scaling._DEFERRED.reset(token)
            if certified:
                assert scale_exponent(g) == 0, (exponent, sparse)
    # the certificate is decisive for ordinary gradients: no second look at them
    g = torch.randn(3, P, generator=gen, dtype=dtype)
    token = scaling._DEFERRED.set(g)
    try:
        check_deferred(g, functools.partial(gram_of, g))
    finally:
        scaling._DEFERRED.reset(token)


def test_aggregate_reads_an_ordinary_matrix_once_and_still_rescales_extreme_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mtoframe import scaling

    calls: list[float] = []
    exact = scaling.scale_exponent

    def spy(grads: torch.Tensor) -> int:
        calls.append(float(grads.abs().max()))
        return exact(grads)

    monkeypatch.setattr(scaling, "scale_exponent", spy)
    g = rows(3).float()
    mtoframe.aggregate(Counted(), g)
    assert calls == []  # decided from the Gram matrix
    big = g * 2.0**60
    d = mtoframe.aggregate(Counted(), big)
    assert len(calls) == 1  # the exact check ran, and rescaled
    torch.testing.assert_close(d, mtoframe.aggregate(Counted(), g))  # degree 0: same update


def test_deferred_check_does_not_fire_outside_aggregate() -> None:
    ctx = StepContext(tasks=("a", "b"), losses=torch.ones(2))
    ctx.grads = rows(2).float() * 2.0**60
    Counted().on_shared_grads(ctx=ctx)  # a trainer step: no rescaling, no OutOfBand
    assert ctx.update is not None and torch.isfinite(ctx.update).all()


# -- helpers that moved into core ------------------------------------------------------------------


def test_method_init_calls_reset() -> None:
    class Stateful(mtoframe.Method):
        name = "stateful"

        def reset(self) -> None:
            self.count = 0

    assert Stateful().count == 0


def test_seeded_orders_are_per_row_shuffles_of_a_seeded_random() -> None:
    a, b = mtoframe.SeededOrders(5), random.Random(5)
    for T in (1, 2, 6):
        orders = a.orders(T)
        assert len(orders) == T
        for i in range(T):
            others = [j for j in range(T) if j != i]
            b.shuffle(others)
            assert orders[i] == others
    a.reset()
    assert a.orders(6) == mtoframe.SeededOrders(5).orders(6)


def test_seeded_orders_resume_from_a_weights_only_checkpoint(tmp_path) -> None:
    a = mtoframe.SeededOrders(2)
    a.orders(4)
    torch.save({"generator": a.state()}, tmp_path / "s.pt")
    b = mtoframe.SeededOrders(9)
    b.load(torch.load(tmp_path / "s.pt", weights_only=True)["generator"])
    assert [b.orders(5) for _ in range(3)] == [a.orders(5) for _ in range(3)]


def test_seeded_orders_refuse_a_torch_generator_state_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"int64 tensor of 625 Mersenne Twister words, got a torch.uint8 tensor"):
        mtoframe.SeededOrders(0).load(torch.Generator().manual_seed(0).get_state())


def test_seeded_generator_resumes_its_torch_stream() -> None:
    a = mtoframe.SeededGenerator(3)
    torch.rand(4, generator=a.gen)
    b = mtoframe.SeededGenerator(0)
    b.load(a.state())
    assert torch.equal(torch.rand(5, generator=b.gen), torch.rand(5, generator=a.gen))
    a.reset()
    assert torch.equal(a.state(), torch.Generator().manual_seed(3).get_state())


def test_expect_keys_names_both_sets() -> None:
    mtoframe.expect_keys("m", {"a": 1}, {"a"})
    with pytest.raises(ValueError, match=r"'m' must have keys \['a', 'b'\], got \['a'\]"):
        mtoframe.expect_keys("m", {"a": 1}, {"a", "b"})


def test_loss_weighting_base_applies_the_stacking_rule() -> None:
    class W1(mtoframe.LossWeighting):
        name = "w1"

    class W2(mtoframe.LossWeighting):
        name = "w2"

    a, b = W1(), W2()
    assert a.roles == mtoframe.Role.LOSS
    with pytest.raises(mtoframe.StackError, match="'w1' cannot be stacked with the loss-level method 'w2'"):
        a.check_stack([a, b])


# -- one warning class for every method's solver failures -------------------------------------------


def _force_failure(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A method instance of ``name`` whose solver is made to fail (None: plugin not installed)."""
    if name not in mtoframe.available():
        return None
    m: Any = mtoframe.create(name)
    if name in ("nashmtl", "cagrad"):
        def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("forced failure")
        monkeypatch.setattr(m.problem(10), "_run", broken)
    elif name == "fairgrad":
        import mtoframe_fairgrad.fairgrad as fair
        monkeypatch.setattr(fair, "solve_fair_weights", lambda kh, alpha: (None, "forced failure"))
    elif name == "mgda":
        import mtoframe_gradmethods.mgda as mgda
        real = mtoframe.numerics.min_norm_point
        monkeypatch.setattr(mgda, "min_norm_point", lambda k, **kw: real(k, tol=kw["tol"], max_iter=1))
    elif name == "upgrad":
        import mtoframe_gradmethods.upgrad as upgrad
        real_nnqp = mtoframe.numerics.nnqp
        monkeypatch.setattr(upgrad, "nnqp", lambda k, q, **kw: real_nnqp(k, q, **kw, max_iter=1))
    return m


@pytest.mark.parametrize("name", ["nashmtl", "cagrad", "fairgrad", "mgda", "upgrad"])
def test_filtering_solver_warning_catches_every_method(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _force_failure(name, monkeypatch)
    if m is None:
        pytest.skip(f"{name} is not installed")
    g = torch.randn(10, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g[1:5] = -g[1:5] + 0.1 * g[5:9]  # conflicting rows: the capped solvers cannot finish in one step
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("ignore")  # everything else silenced: only the user's filter below lets through
        warnings.filterwarnings("always", category=mtoframe.SolverWarning)
        mtoframe.aggregate(m, g)
    assert [type(w.message) for w in seen] == [mtoframe.SolverWarning]
    assert f"{name}: solver failed" in str(seen[0].message)
    with warnings.catch_warnings(record=True) as silenced:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=mtoframe.SolverWarning)
        m.failures.reset()  # would warn again, but the user's filter silences every method's
        mtoframe.aggregate(m, g)
    assert not [w for w in silenced if "solver failed" in str(w.message)]
    assert m.failures.count == 1 and mtoframe.SolverWarning is mtoframe.solvers.SolverWarning


def test_a_subclass_without_weigh_cannot_be_instantiated():
    class NoWeights(mtoframe.GramWeighting):
        name = "noweights"
        summary = "no weights"
        paper = "test fixture"

    with pytest.raises(TypeError, match="weigh"):
        NoWeights()
