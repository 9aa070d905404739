"""The hybrid IMTL (IMTL-L + IMTL-G, LibMTL's ``IMTL``) as the stack ``["imtll", "imtlg"]``:
one trainer step equals LibMTL's, written from its formulas in float64."""

import pytest
import torch

import mtoframe
from mtoframe.errors import StackError
from mtoframe.testing import make_batch, make_trainer, make_vector_model, step_keeping_grads
from mtoframe_lossweighting import IMTLL, UW

pytestmark = pytest.mark.skipif("imtlg" not in mtoframe.available(), reason="mtoframe-gradmethods is not installed")

S = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)


def libmtl_imtl_step(model, batch, s):
    """LibMTL's IMTL: losses ``e^s L − s``; rows ``g_t`` their shared gradients; IMTL-G's
    ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2:T}`` with ``D``, ``U`` the differences of the
    rows and of the unit rows; shared ``Σ α_t g_t``; heads and ``s`` the gradient of Σ ℓ_t."""
    x, targets = batch
    s = s.clone().requires_grad_(True)
    shared = list(model.encoder.parameters())
    z = model.encoder(x)
    scaled = [torch.exp(s[i]) * ((model.heads[t](z) - targets[t]) ** 2).mean() - s[i] for i, t in enumerate(model.heads)]
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, shared, retain_graph=True)]) for v in scaled])
    U = G / G.norm(dim=1, keepdim=True)
    D, Ud = G[:1] - G[1:], U[:1] - U[1:]
    tail = G[0] @ Ud.T @ torch.linalg.inv(D @ Ud.T)
    alpha = torch.cat([(1 - tail.sum()).reshape(1), tail])
    heads = {t: torch.autograd.grad(v, list(model.heads[t].parameters()), retain_graph=True)
             for t, v in zip(model.heads, scaled)}
    (s_grad,) = torch.autograd.grad(sum(scaled), s)
    return alpha @ G, heads, s_grad


def hybrid_step(model, batch):
    """One step of the stack with ``s = S``: the IMTL-L method and the encoder's gradient."""
    imtll = IMTLL()
    imtll.load_state_dict({"param": S.clone()})
    trainer = make_trainer([imtll, "imtlg"], model=model)
    assert torch.equal(imtll.param.detach(), S)
    step_keeping_grads(trainer, batch)
    return imtll, torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters()])


def test_hybrid_stack_equals_libmtl_imtl_step():
    model = make_vector_model()
    batch = make_batch(model)
    shared_expected, heads_expected, s_expected = libmtl_imtl_step(model, batch, S)
    imtll, shared = hybrid_step(model, batch)
    torch.testing.assert_close(shared, shared_expected, rtol=1e-9, atol=1e-12)
    for t in model.heads:
        for p, e in zip(model.heads[t].parameters(), heads_expected[t]):
            torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(imtll.param.grad, s_expected, rtol=1e-9, atol=1e-12)


def test_hybrid_differs_from_imtlg_alone():
    model = make_vector_model()
    batch = make_batch(model)
    _, hybrid = hybrid_step(model, batch)
    alone = make_vector_model()
    step_keeping_grads(make_trainer(["imtlg"], model=alone), batch)
    plain = torch.cat([p.grad.reshape(-1) for p in alone.encoder.parameters()])
    assert not torch.allclose(hybrid, plain)
    # same direction (IMTL-G's conditions only see unit vectors), different length
    cos = hybrid @ plain / (hybrid.norm() * plain.norm())
    assert float(cos) == pytest.approx(1.0, abs=1e-9)


def test_other_loss_weightings_before_imtlg_stay_rejected():
    with pytest.raises(StackError, match="direction is invariant"):
        make_trainer([UW(), "imtlg"])
