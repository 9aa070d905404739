from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe.numerics import min_norm_point
from mtoframe.testing.factories import gradient_families, make_batch, make_conv_model, make_trainer

CASES = list(gradient_families())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kkt_of_the_min_norm_point(case):
    # d is the min-norm point of conv{g_t} iff g_t·d >= ‖d‖² for every t
    g = case.grads
    d = mtoframe.aggregate("mgda", g, case.losses)
    scale = float((g * g).sum(1).max())
    assert (g @ d >= d @ d - 1e-9 * scale).all()
    # and d lies in the hull: its weights solve the simplex-constrained least squares
    # gelsd (SVD) is robust to the rank-deficient families (duplicate rows); the default driver is not
    w = torch.linalg.lstsq(g.T, d.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    assert float(torch.linalg.vector_norm(w @ g - d)) <= 1e-8 * scale**0.5 + 1e-300


def test_two_task_closed_form():
    g = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0]])
    g1, g2 = g
    gamma = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    assert 0 < gamma < 1
    assert torch.allclose(mtoframe.aggregate("mgda", g), gamma * g1 + (1 - gamma) * g2, atol=1e-12)


@pytest.mark.parametrize("mode", ["l2", "loss", "loss+"])
def test_normalisations(mode):
    case = CASES[1]
    g, losses = case.grads, case.losses
    norms = g.norm(dim=1)
    n = {"l2": norms, "loss": losses, "loss+": losses * norms}[mode]
    gn = g / n.unsqueeze(1)
    w = min_norm_point(gn @ gn.T).weights
    assert torch.allclose(mtoframe.aggregate(mtoframe.create("mgda", normalization=mode), g, losses), w @ gn)
    raw = mtoframe.create("mgda", normalization=mode, combine="raw")
    assert torch.allclose(mtoframe.aggregate(raw, g, losses), w @ g)


def test_loss_normalisation_needs_losses():
    with pytest.raises(mtoframe.MtoError, match="losses"):
        mtoframe.aggregate(mtoframe.create("mgda", normalization="loss"), CASES[0].grads)


def test_bad_option_names_allowed_values():
    with pytest.raises(mtoframe.OptionError, match="normalization"):
        mtoframe.create("mgda", normalization="L2")


def test_frank_wolfe_close_to_exact():
    for case in CASES[:5]:
        fw = mtoframe.aggregate(mtoframe.create("mgda", solver="frankwolfe", max_iter=400), case.grads)
        ex = mtoframe.aggregate("mgda", case.grads)
        assert float(fw @ fw) == pytest.approx(float(ex @ ex), rel=1e-2, abs=1e-3 * float(case.grads.norm()) ** 2)


def test_solver_failure_is_counted_and_warned(monkeypatch):
    import mtoframe_gradmethods.mgda as mod

    def capped(k, **kw):
        return min_norm_point(k, tol=kw["tol"], max_iter=1)  # T=10 on the boundary needs more than one cycle

    monkeypatch.setattr(mod, "min_norm_point", capped)
    m = mtoframe.create("mgda")
    g = CASES[-6].grads  # conflicting rows: the min-norm point is on the hull's boundary
    assert g.shape[0] == 10 and CASES[-6].name == "conflicting-T10"
    with pytest.warns(mtoframe.SolverWarning, match="solver/failures/mgda"):
        d = mtoframe.aggregate(m, g)
    mtoframe.aggregate(m, g)  # warned once, counted twice
    assert m.failures.count == 2 and torch.isfinite(d).all()
    # the fallback is the solver's last feasible iterate, not equal weighting
    assert not torch.allclose(d, g.mean(0))


def test_mgda_ub_representation_space_update():
    """MGDA-UB: the encoder receives the min-norm combination of ∂L_t/∂Z; heads unweighted."""
    model = make_conv_model()
    x, y = make_batch(model)
    trainer = make_trainer([("mgda", {"space": "representation"})], model=model, lr=0.0)
    trainer.step((x, y))
    got_enc = [p.grad.clone() for p in model.encoder.parameters()]
    got_heads = [p.grad.clone() for p in model.head_parameters()]
    model.zero_grad()
    z = model.encoder(x)
    losses = torch.stack([((model.heads[t](z) - y[t]) ** 2).mean() for t in model.heads])
    S = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in range(3)]).reshape(3, -1)
    w = min_norm_point(S @ S.T).weights
    torch.autograd.backward(z, (w @ S).view_as(z), retain_graph=True)
    losses.sum().backward(inputs=model.head_parameters())
    for a, b in zip(got_enc, model.encoder.parameters()):
        assert torch.allclose(a, b.grad, atol=1e-12)
    for a, b in zip(got_heads, model.head_parameters()):
        assert torch.allclose(a, b.grad, atol=1e-12)


def test_heads_weighted_option():
    model = make_conv_model()
    x, y = make_batch(model)
    trainer = make_trainer([("mgda", {"heads_weighted": True})], model=model, lr=0.0)
    trainer.step((x, y))
    got = [p.grad.clone() for p in model.head_parameters()]
    model.zero_grad()
    z = model.encoder(x)
    losses = torch.stack([((model.heads[t](z) - y[t]) ** 2).mean() for t in model.heads])
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], list(model.encoder.parameters()), retain_graph=True)]) for t in range(3)])
    w = min_norm_point(G @ G.T).weights
    (w * losses).sum().backward(inputs=model.head_parameters())
    for a, b in zip(got, model.head_parameters()):
        assert torch.allclose(a, b.grad, atol=1e-12)


def _two_task_min_norm(K: torch.Tensor) -> torch.Tensor:
    """Min-norm point of the segment [g1, g2] from its Gram matrix (closed form)."""
    w1 = ((K[1, 1] - K[0, 1]) / (K[0, 0] - 2 * K[0, 1] + K[1, 1])).clamp(0.0, 1.0)
    return torch.stack([w1, 1 - w1])


@pytest.mark.parametrize("rep_rows", ["flatten", "batch_sum"])
def test_mgda_ub_rows_as_sener_koltun_or_libmtl(rep_rows):
    """``flatten`` (Sener & Koltun): weights from the whole ∂L_t/∂Z; ``batch_sum`` (LibMTL's
    rep_grad): weights from Σ_b ∂L_t/∂Z_b, applied to the full per-sample gradients."""
    model = make_conv_model(tasks=("a", "b"), seed=4)
    x, y = make_batch(model, seed=7)
    trainer = make_trainer([("mgda", {"space": "representation", "rep_rows": rep_rows})], model=model, lr=0.0)
    trainer.step((x, y))
    got = torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters()])
    model.zero_grad()
    z = model.encoder(x)
    losses = [((model.heads[t](z) - y[t]) ** 2).mean() for t in model.heads]
    per = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in losses])  # T×B×C×H×W
    flat = per.reshape(2, -1)
    summed = per.reshape(2, per.shape[1], -1).sum(1)
    w_flat, w_sum = _two_task_min_norm(flat @ flat.T), _two_task_min_norm(summed @ summed.T)
    assert not torch.allclose(w_flat, w_sum, atol=1e-3)  # the two references differ on this batch
    w = w_flat if rep_rows == "flatten" else w_sum
    expected = torch.autograd.grad(z, list(model.encoder.parameters()), grad_outputs=(w @ flat).view_as(z))
    torch.testing.assert_close(got, torch.cat([e.reshape(-1) for e in expected]), rtol=1e-9, atol=1e-12)


def test_batch_sum_rows_need_representation_space_and_a_trainer():
    with pytest.raises(mtoframe.errors.OptionError, match="rep_rows.*space='representation'"):
        mtoframe.create("mgda", rep_rows="batch_sum")
    m = mtoframe.create("mgda", space="representation", rep_rows="batch_sum")
    with pytest.raises(mtoframe.errors.MtoError, match="batch_sum.*trainer"):
        mtoframe.aggregate(m, torch.randn(2, 6, dtype=torch.float64))
