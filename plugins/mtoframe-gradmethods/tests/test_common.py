"""Properties every method of the distribution must have."""

from __future__ import annotations

import copy

import pytest
import torch

import mtoframe
from mtoframe.testing.factories import gradient_families, make_batch, make_conv_model, make_trainer, make_vector_model

CASES = list(gradient_families())

NAMES = ["mgda", "pcgrad", "imtlg", "gradvac", "alignedmtl", "upgrad", "graddrop"]
# deterministic aggregators whose output does not depend on the order of the tasks
EQUIVARIANT = ["mgda", "imtlg", "alignedmtl", "upgrad"]


def test_registered_with_docs():
    for name in NAMES:
        m = mtoframe.create(name)
        assert name in mtoframe.available()
        doc = " ".join((type(m).__doc__ or "").split()).lower()
        assert m.heads_receive and "heads receive" in doc
        assert repr(m).startswith(type(m).__name__ + "(")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_finite_on_every_family(name, case):
    d = mtoframe.aggregate(name, case.grads, case.losses)
    assert d.shape == (case.grads.shape[1],) and d.dtype == case.grads.dtype
    assert torch.isfinite(d).all()


@pytest.mark.parametrize("name", EQUIVARIANT)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_permutation_equivariance(name, case):
    perm = torch.randperm(case.grads.shape[0], generator=torch.Generator().manual_seed(1))
    d = mtoframe.aggregate(name, case.grads, case.losses)
    dp = mtoframe.aggregate(name, case.grads[perm], case.losses[perm])
    scale = float(torch.linalg.vector_norm(case.grads)) + 1e-300
    assert float(torch.linalg.vector_norm(d - dp)) <= 1e-8 * scale


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_reproduces_outputs(name):
    m = mtoframe.create(name)
    cases = [c for c in CASES if c.grads.shape[0] == 3]
    for c in cases[:3]:
        mtoframe.aggregate(m, c.grads, c.losses)
    state = copy.deepcopy(m.state_dict())
    first = [mtoframe.aggregate(m, c.grads, c.losses) for c in cases]
    fresh = mtoframe.create(name)
    fresh.load_state_dict(state)
    second = [mtoframe.aggregate(fresh, c.grads, c.losses) for c in cases]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # weights_only checkpoints
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name,space,conv", [(n, "params", False) for n in NAMES if n != "graddrop"]
                         + [("mgda", "representation", True), ("graddrop", "representation", True),
                            ("graddrop", "representation", False), ("gradvac", "params", True)])
def test_trains_inside_trainer(name, space, conv):
    opts = {"space": space} if name == "mgda" else {}
    model = make_conv_model() if conv else make_vector_model()
    trainer = make_trainer([(name, opts)], model=model, lr=0.05)
    assert trainer.grad_space == space
    before = [p.detach().clone() for p in model.parameters()]
    for s in range(3):
        ctx = trainer.step(make_batch(model, seed=s))
        assert not ctx.skipped
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    enc = len(list(model.encoder.parameters()))
    assert any(not torch.equal(b, a) for b, a in zip(before[:enc], after[:enc])), "encoder did not train"
    assert any(not torch.equal(b, a) for b, a in zip(before[enc:], after[enc:])), "heads did not train"


@pytest.mark.parametrize("name", NAMES)
def test_partial_labels(name):
    model = make_vector_model()
    trainer = make_trainer([name], model=model)
    x, y = make_batch(model)
    trainer.step((x, y))
    ctx = trainer.step((x, {"a": y["a"], "c": y["c"]}))
    assert ctx.tasks == ("a", "c") and not ctx.skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_single_task_is_its_gradient(name):
    g = torch.randn(1, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mtoframe.aggregate(name, g, torch.ones(1)), g[0])
