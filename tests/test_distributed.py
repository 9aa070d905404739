"""Two gloo ranks, each stepping on half the batch, equal one process on the whole batch."""

from __future__ import annotations

import datetime
import importlib
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtoframe import MultiTaskModel
from mtoframe.distributed import Communicator, all_gather_cat, all_reduce_mean, world_size
from mtoframe.testing.factories import make_batch, make_conv_model, make_trainer, make_vector_model

from helpers import Negate, ScaledSum

STEPS = 3
BATCH = 8

# key -> (plugin module or None, stack factory, model kind, optimiser)
STACKS = {
    "ew": (None, lambda: [], "vector", "sgd"),
    "scaledsum": (None, lambda: [ScaledSum(scale=0.7)], "vector", "adam"),
    "negate+scaledsum": (None, lambda: [Negate(), ScaledSum()], "vector", "sgd"),
    "scaledsum-rep": (None, lambda: [ScaledSum(space="representation")], "conv", "sgd"),
    "nashmtl": ("mtoframe_nashmtl", lambda: ["nashmtl"], "vector", "sgd"),
    "cagrad": ("mtoframe_cagrad", lambda: ["cagrad"], "vector", "sgd"),
    "pcgrad": ("mtoframe_gradmethods", lambda: ["pcgrad"], "vector", "sgd"),
    "mgdaub": ("mtoframe_gradmethods", lambda: [("mgda", {"space": "representation"})], "vector", "sgd"),
    "famo": ("mtoframe_famo", lambda: ["famo"], "vector", "sgd"),
    "uw": ("mtoframe_lossweighting", lambda: ["uw"], "vector", "adam"),
    "dbmtl": ("mtoframe_dbmtl", lambda: ["dbmtl"], "vector", "sgd"),
    "repmtl-tsr": ("mtoframe_repmtl", lambda: [("repmtl", {"use_csa": False})], "vector", "sgd"),
    "repmtl": ("mtoframe_repmtl", lambda: ["repmtl"], "vector", "sgd"),
    # CSA's negatives are the global batch's: every rank's anchors (or cross products) gathered.
    # "task" negatives need non-linear heads: with scalar linear heads every sample's task Gram
    # has the same direction, so the loss would be constant.
    "repmtl-task": ("mtoframe_repmtl", lambda: [("repmtl", {"negatives": "task", "positive_in_denominator": True})], "mlp", "sgd"),
    "repmtl+nashmtl": (("mtoframe_repmtl", "mtoframe_nashmtl"), lambda: ["repmtl", "nashmtl"], "vector", "sgd"),
}


def _installed(mods: object) -> bool:
    names = () if mods is None else (mods,) if isinstance(mods, str) else mods
    try:
        for m in names:  # type: ignore[union-attr]
            importlib.import_module(m)
    except ImportError:
        return False
    return True


AVAILABLE = [k for k, (mods, *_) in STACKS.items() if _installed(mods)]


def _model(kind: str) -> MultiTaskModel:
    if kind == "conv":
        return make_conv_model(seed=0)
    model = make_vector_model(seed=0)
    if kind == "mlp":  # non-linear heads: per-sample saliency directions differ
        torch.manual_seed(1)
        heads = {t: torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)) for t in model.heads}
        model = MultiTaskModel(encoder=model.encoder, heads=heads).to(torch.float64)
    return model


def _run(key: str, rank: int | None) -> list[torch.Tensor]:
    """Train ``key`` STEPS steps: the whole batch (rank None) or this rank's half."""
    _, stack, kind, opt = STACKS[key]
    model = _model(kind)
    trainer = make_trainer(stack(), model=model, optimizer=opt, lr=0.05)
    for step in range(STEPS):
        x, y = make_batch(model, batch=BATCH, seed=10 + step)
        if rank is not None:
            half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
            x, y = x[half], {t: v[half] for t, v in y.items()}
        trainer.step((x, y))
    return [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, port: int, keys: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        results: dict[str, object] = {}
        for key in keys:
            try:
                results[key] = _run(key, rank)
            except Exception:  # reported by the test of this key, which then fails
                results[key] = traceback.format_exc()
        results["_primitives"] = _primitives(rank)
        if _installed("mtoframe_repmtl"):
            results["_csa"] = _csa_shards(rank)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _primitives(rank: int) -> dict[str, torch.Tensor]:
    x = torch.arange(3, dtype=torch.float64) + 10 * rank
    mean = all_reduce_mean(x)
    # all_gather_cat: a loss read by both ranks from the gathered tensor gives this rank's rows
    # the sum of both ranks' gradients.
    a = (torch.arange(4, dtype=torch.float64).reshape(2, 2) + rank).requires_grad_()
    gathered = all_gather_cat(a)
    ((gathered**2).sum() * (rank + 1)).backward()
    comm = Communicator()
    upd = comm.local_update(torch.arange(6, dtype=torch.float64))
    return {"mean": mean, "gathered": gathered.detach(), "grad": a.grad, "update": upd}


CSA_OPTIONS = [(n, p) for n in ("anchor", "task") for p in (False, True)]


def _csa_saliency() -> torch.Tensor:
    return torch.randn(6, 3, 4, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _csa_shards(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each rank's CSA value and saliency gradient on its half of one batch, for every option."""
    from mtoframe_repmtl import csa_loss

    out = []
    for negatives, pid in CSA_OPTIONS:
        s = _csa_saliency()[rank * 3 : (rank + 1) * 3].requires_grad_()
        loss = csa_loss(s, 0.3, negatives=negatives, positive_in_denominator=pid)
        loss.backward()
        out.append((loss.detach(), s.grad))
    return out


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, object]]:
    out = str(tmp_path_factory.mktemp("ddp") / "result")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children start with torch and the plugins already imported (spawn re-imports them)
    mp.start_processes(_worker, args=(port, AVAILABLE, out), nprocs=2, join=True, start_method="fork")
    return {r: torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)}


@pytest.mark.parametrize("key", list(STACKS))
def test_two_ranks_on_halves_equal_one_process_on_union(key: str, distributed_results: dict) -> None:
    if key not in AVAILABLE:
        pytest.skip(f"plugin for {key!r} not installed")
    reference = _run(key, None)
    for rank in (0, 1):
        got = distributed_results[rank][key]
        assert not isinstance(got, str), f"rank {rank} failed:\n{got}"
        for p, q in zip(got, reference):
            torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)  # Nash-MTL is iterative: ulp-level G differences
    # the stack really trained (a no-op update would match trivially)
    start = [p.detach() for p in _model(STACKS[key][2]).parameters()]
    assert any(not torch.equal(p, q) for p, q in zip(reference, start))


def test_primitives(distributed_results: dict) -> None:
    r0, r1 = distributed_results[0]["_primitives"], distributed_results[1]["_primitives"]
    expected_mean = torch.arange(3, dtype=torch.float64) + 5
    torch.testing.assert_close(r0["mean"], expected_mean)
    torch.testing.assert_close(r1["mean"], expected_mean)
    a0 = torch.arange(4, dtype=torch.float64).reshape(2, 2)
    both = torch.cat([a0, a0 + 1])
    torch.testing.assert_close(r0["gathered"], both)
    # d/da_r of Σ_k (k+1)·‖gathered‖² = (1 + 2)·2·a_r
    torch.testing.assert_close(r0["grad"], 6 * a0)
    torch.testing.assert_close(r1["grad"], 6 * (a0 + 1))
    torch.testing.assert_close(r0["update"], torch.tensor([0.0, 2, 4], dtype=torch.float64))
    torch.testing.assert_close(r1["update"], torch.tensor([6.0, 8, 10], dtype=torch.float64))


def test_single_process_helpers_are_identities() -> None:
    x = torch.randn(3, requires_grad=True)
    assert world_size() == 1
    assert all_reduce_mean(x) is x
    assert all_gather_cat(x) is x


def test_csa_shards_give_the_union_loss_and_gradient(distributed_results: dict) -> None:
    """Mean over ranks of the shard values is the union's CSA; a rank's saliency gradient (its
    gather's backward sums both ranks' terms) is N times the union's rows for its samples."""
    repmtl = pytest.importorskip("mtoframe_repmtl")
    for i, (negatives, pid) in enumerate(CSA_OPTIONS):
        s = _csa_saliency().requires_grad_()
        union = repmtl.csa_loss(s, 0.3, negatives=negatives, positive_in_denominator=pid)
        union.backward()
        (l0, g0), (l1, g1) = distributed_results[0]["_csa"][i], distributed_results[1]["_csa"][i]
        torch.testing.assert_close((l0 + l1) / 2, union.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(torch.cat([g0, g1]) / 2, s.grad, rtol=1e-10, atol=1e-14)
        assert not torch.allclose(l0, l1)  # the shards differ: the test is not symmetric by accident
