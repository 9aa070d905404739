"""The two-task toy: its losses and gradients against METHODS.md's formulas (torch autograd),
the Pareto set, the closed forms against the installed plugins, and the Adam loop against
torch.optim.Adam."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mtoframe
from mtoframe.bench import toy


def torch_toy(x: torch.Tensor, scale=(1.0, 1.0)) -> torch.Tensor:
    """METHODS.md's toy written literally, with ``torch.clamp`` for its max(·, ·) as the reference
    code (whose gradient passes at the tie, unlike ``torch.max``'s, which halves it)."""
    x1, x2 = x[..., 0], x[..., 1]
    low = 5e-6
    f1 = torch.log(torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), low)) + 6
    f2 = torch.log(torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), low)) + 6
    g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(0.5 * x2), 0)
    c2 = torch.clamp(torch.tanh(-0.5 * x2), 0)
    return torch.stack([(c1 * f1 + c2 * g1) * scale[0], (c1 * f2 + c2 * g2) * scale[1]], -1)


POINTS = [(0.0, 0.0), (-8.5, 7.5), (9.0, 9.0), (10.0, -8.0), (-7.5, -0.5), (3.0, -8.3552), (1.3, 2.2), (-2.0, -0.3)]


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.1, 1.0)])
def test_losses_and_gradients_match_the_formulas(scale):
    x = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    ref = torch_toy(x, scale)
    grads = torch.stack([torch.autograd.grad(ref[:, t].sum(), x, retain_graph=True)[0] for t in range(2)], 1)
    L, G = toy.toy_losses_and_grads(np.asarray(POINTS), scale)
    np.testing.assert_allclose(L, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(G, grads.numpy(), rtol=1e-10, atol=1e-12)


def test_known_values():
    L, G = toy.toy_losses_and_grads(np.array([[0.0, 0.0], [-7.0, 20.0]]))
    # at the origin both gates are closed: zero losses, and only the tie gradient of the gates moves x2
    assert L[0].tolist() == [0.0, 0.0]
    assert G[0, 0, 0] == 0.0 and G[0, 1, 0] == 0.0
    f1 = f2 = np.log(3.5) + 6  # |0.5·(−7) − tanh 0| = |0.5·3 + tanh 0 + 2| = 3.5
    g = (49 + 0.1 * 64) / 10 - 20
    # torch.clamp passes the gates' full gradient (1/2 · sech² 0) at the tie x2 = 0
    assert G[0, 0, 1] == pytest.approx(0.5 * f1 - 0.5 * g, rel=1e-12)
    assert G[0, 1, 1] == pytest.approx(0.5 * f2 - 0.5 * g, rel=1e-12)
    # far up the x2 axis c1 = tanh(10), c2 = 0 and f1 = log|0 - tanh(-20)| + 6 = log(tanh 20) + 6
    assert L[1, 0] == pytest.approx(np.tanh(10.0) * (np.log(np.tanh(20.0)) + 6), rel=1e-12)


def test_pareto_set_point():
    # (0, -8.3552) is where equal weights make the gradient vanish: the average-loss optimum
    _, G = toy.toy_losses_and_grads(np.array([0.0, toy.PARETO_X2]))
    assert np.abs(0.5 * (G[0] + G[1])).max() < 1e-4
    assert G[0, 0] < 0 < G[1, 0]  # the tasks pull x1 apart: a trade-off, not a common minimum
    assert toy.pareto_stationarity(np.array([0.0, toy.PARETO_X2]))[0] < 1e-4
    # x2 of that point to the stated digits: bisection on d(l1 + l2)/dx2 along x1 = 0
    lo, hi = -9.0, -8.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        _, Gm = toy.toy_losses_and_grads(np.array([0.0, mid]))
        lo, hi = (mid, hi) if Gm[:, 1].sum() < 0 else (lo, mid)
    assert lo == pytest.approx(toy.PARETO_X2, abs=1e-4)
    # elsewhere on the set some convex combination vanishes too; off the set none does
    for x1 in (-5.0, 2.0, 6.0):
        xs = np.linspace(-8.6, -8.2, 801)
        best = toy.pareto_stationarity(np.stack([np.full_like(xs, x1), xs], -1)).min()
        assert best < 1e-3
    assert toy.pareto_stationarity(np.array([0.0, -6.0]))[0] > 1e-2
    assert toy.on_front(np.array([[0.0, -8.36], [7.0, -8.45], [8.0, -8.36], [0.0, -7.5]])).tolist() == [True, True, False, False]


def _families():
    g = torch.Generator().manual_seed(0)
    out = [torch.randn(2, 2, generator=g, dtype=torch.float64) for _ in range(20)]
    out.append(torch.tensor([[1.0, 0.0], [-0.9, 0.1]], dtype=torch.float64))  # strong conflict
    out.append(torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64))  # parallel
    out.append(torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64))  # orthogonal
    return out


@pytest.mark.parametrize("name,rtol", [("mgda", 1e-7), ("pcgrad", 1e-10), ("upgrad", 1e-5), ("cagrad", 1e-4),
                                       ("nashmtl", 2e-3)])
def test_closed_forms_equal_the_plugins(name, rtol):
    if name not in mtoframe.available():
        pytest.skip(f"{name} is not installed")
    opts = toy.method_options(name, toy.PROTOCOLS["b"])
    for G in _families():
        form = toy.CLOSED_FORMS[name](opts, 1, np.random.default_rng(0))
        d_toy = form(G.numpy()[None], np.ones((1, 2)))[0]
        d_ref = mtoframe.aggregate(mtoframe.create(name, **opts), G, torch.ones(2, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(d_toy, d_ref, rtol=rtol, atol=rtol * np.abs(d_ref).max())


def test_cagrad_closed_form_is_the_argmin():
    """Against a dense grid over the simplex (independent of any plugin)."""
    rng = np.random.default_rng(1)
    for c in (0.0, 0.4, 2.0):
        form = toy.cagrad_form({"c": c, "rescale": 0}, 1, rng)
        for _ in range(20):
            G = rng.standard_normal((2, 2))
            g0 = G.mean(0)
            ws = np.linspace(0, 1, 200001)
            gw = ws[:, None] * G[0] + (1 - ws[:, None]) * G[1]
            obj = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
            best = gw[np.argmin(obj)]
            if np.linalg.norm(best) < 0.05:
                continue  # d's direction is ill-conditioned in w there; the grid cannot resolve it
            expected = g0 + c * np.linalg.norm(g0) / np.linalg.norm(best) * best
            np.testing.assert_allclose(form(G[None], np.ones((1, 2)))[0], expected, atol=1e-4)


def test_nashmtl_closed_form_solves_the_bargaining_equations():
    form = toy.nashmtl_form({"max_norm": 0.0}, 3, np.random.default_rng(0))
    G = np.random.default_rng(2).standard_normal((3, 2, 5))
    form(G, np.ones((3, 2)))
    # the form keeps alpha in its closure; recover it through d = αᵀG by least squares
    d = form(G, np.ones((3, 2)))
    for s in range(3):
        alpha = np.linalg.lstsq(G[s].T, d[s], rcond=None)[0]
        np.testing.assert_allclose(alpha * (G[s] @ G[s].T @ alpha), 1.0, rtol=1e-10)


def test_protocol_b_cagrad_reaches_the_front_from_every_start():
    """Protocol (b) runs CAGrad as the Nash-MTL/FAMO toy code (×T, then clipped to norm 1):
    it reaches the Pareto set from all five starts (35k Adam steps, the protocol's budget)."""
    if "cagrad" not in mtoframe.available():
        pytest.skip("cagrad is not installed")
    res = toy.run_protocol(toy.PROTOCOLS["b"], ["cagrad"], record_every=35_000)
    r = res["methods"]["cagrad"]
    assert r["options"]["scale_by_tasks"] is True and r["options"]["max_norm"] == 1.0
    assert r["reached"] == 5, r["endpoints"]


def test_adam_loop_equals_torch_adam():
    proto = toy.Protocol("t", "t", (0.1, 1.0), ((-8.5, 7.5), (0.0, 0.0), (9.0, -1.0)), 300, lr=1e-2)
    res = toy.run_protocol(proto, ["ew", "mgda"], record_every=50)
    for name in ("ew", "mgda"):
        x = torch.tensor(proto.starts, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([x], lr=1e-2)
        for _ in range(300):
            L = torch_toy(x, proto.scale)
            G = torch.stack([torch.autograd.grad(L[:, t].sum(), x, retain_graph=True)[0] for t in range(2)], 1)
            if name == "ew":
                d = G.sum(1)
            else:
                w = torch.from_numpy(toy.mgda_weights(G.numpy()))[:, None]
                d = w * G[:, 0] + (1 - w) * G[:, 1]
            opt.zero_grad()
            x.grad = d
            opt.step()
        np.testing.assert_allclose(res["methods"][name]["endpoints"], x.detach().numpy(), rtol=1e-9, atol=1e-9)
        assert len(res["methods"][name]["trajectory"]) == 300 // 50 + 1


def test_famo_form_matches_a_hand_loop():
    """FAMO per METHODS.md with torch.optim.Adam on the logits (weight decay γ)."""
    scale, gamma = (0.1, 1.0), 0.01
    rng = np.random.default_rng(0)
    form = toy.FamoForm({"w_lr": 0.025, "gamma": gamma}, 1, rng, scale)
    xi = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.025, weight_decay=gamma)
    mins = torch.tensor([-2.1, -21.0], dtype=torch.float64)
    xs = np.array([[-8.5, 7.5]])
    for _ in range(30):
        L, G = toy.toy_losses_and_grads(xs, scale)
        form.after(L[0])
        d = form(G, L)
        # hand loop
        z = torch.softmax(xi.detach(), 0)
        D = torch.from_numpy(L[0]) - mins + 1e-8
        c = 1 / (z / D).sum()
        np.testing.assert_allclose(d[0], ((c * z / D)[:, None] * torch.from_numpy(G[0])).sum(0).numpy(), rtol=1e-10)
        xs = xs - 0.05 * d
        L2, _ = toy.toy_losses_and_grads(xs, scale)
        delta = torch.log(D) - torch.log(torch.from_numpy(L2[0]) - mins + 1e-8)
        opt.zero_grad()
        xi.grad = (torch.diag(z) - torch.outer(z, z)) @ delta
        opt.step()
    L, _ = toy.toy_losses_and_grads(xs, scale)
    form.after(L[0])
    np.testing.assert_allclose(form.xi[0], xi.detach().numpy(), rtol=1e-8, atol=1e-12)


def test_cli_writes_endpoints_and_plot(tmp_path):
    from mtoframe.cli import main

    rc = main(["toy", "--out", str(tmp_path), "--steps", "200", "--methods", "ew,mgda", "--protocol", "a"])
    assert rc == 0
    data = json.loads((tmp_path / "endpoints.json").read_text())
    a = data["protocols"]["a"]
    assert set(a) == {"ew", "mgda"}
    assert len(a["ew"]["endpoints"]) == 5 and a["ew"]["steps"] == 200
    assert a["ew"]["implementation"] == "closed form"
    assert (tmp_path / "trajectories.json").exists()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "toy_a.png").stat().st_size > 1000
