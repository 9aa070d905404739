"""GLS, SI and RLW."""

import copy
import io

import torch
from lossweighting_helpers import D64, Identity, mse

from mtoframe import StepContext
from mtoframe.testing import make_batch, make_trainer, make_vector_model
from mtoframe_lossweighting import GLS, RLW, SI


def effective_grad(method, losses):
    losses = losses.clone().requires_grad_(True)
    ctx = StepContext(tasks=tuple(f"t{i}" for i in range(len(losses))), losses=losses)
    method.on_task_losses(ctx=ctx)
    (g,) = torch.autograd.grad((ctx.weights * ctx.losses).sum(), losses)
    return g, ctx


def test_gls_gradient_equals_closed_form():
    losses = torch.tensor([0.3, 2.0, 0.05, 4.0], dtype=D64)
    g, _ = effective_grad(GLS(), losses)
    gls = losses.prod() ** (1 / 4)
    torch.testing.assert_close(g, gls / (4 * losses))
    leaf = losses.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(leaf.prod() ** (1 / 4), leaf)  # LibMTL's objective
    torch.testing.assert_close(g, ref)


def test_si_gradient_and_scale_invariance():
    losses = torch.tensor([0.3, 2.0, 0.05], dtype=D64)
    g, ctx = effective_grad(SI(), losses)
    torch.testing.assert_close(g, 1 / losses)
    torch.testing.assert_close(ctx.losses.detach(), torch.log(losses))
    g2, _ = effective_grad(SI(eps=1e-3), losses)
    torch.testing.assert_close(g2, 1 / (losses + 1e-3))


def run(stack, batch, model):
    trainer = make_trainer(stack, model=model, lr=0.05)
    trainer.step(batch)
    return trainer


def test_gls_and_si_trainer_step_equals_hand_loop_and_transform_path():
    for cls, objective in ((GLS, lambda l: l.prod() ** (1 / 3)), (SI, lambda l: l.log().sum())):
        model = make_vector_model()
        batch = make_batch(model)
        ref = copy.deepcopy(model)
        via_rows = copy.deepcopy(model)
        run([cls()], batch, model)
        run([cls(), Identity()], batch, via_rows)
        x, y = batch
        preds = ref(x)
        objective(torch.stack([mse(preds[t], y[t]) for t in "abc"])).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.05 * p.grad
        for p, q, r in zip(model.parameters(), ref.parameters(), via_rows.parameters()):
            torch.testing.assert_close(p, q)
            torch.testing.assert_close(r, q)


def test_rlw_weights_are_softmax_of_its_generator_draw():
    m = RLW(seed=3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        _, ctx = effective_grad(m, torch.ones(4, dtype=D64))
        expected = torch.softmax(torch.randn(4, generator=gen, dtype=D64), 0)
        torch.testing.assert_close(ctx.weights, expected)
        torch.testing.assert_close(ctx.weights.sum(), torch.tensor(1.0, dtype=D64))


def test_rlw_state_dict_resumes_the_draws():
    m = RLW()
    for _ in range(2):
        effective_grad(m, torch.ones(3, dtype=D64))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    other = RLW(seed=123)
    other.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        a = effective_grad(m, torch.ones(3, dtype=D64))[1].weights
        b = effective_grad(other, torch.ones(3, dtype=D64))[1].weights
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, torch.full((3,), 1 / 3, dtype=D64))


def test_rlw_default_seed_follows_torch_manual_seed():
    torch.manual_seed(7)
    a = effective_grad(RLW(), torch.ones(3, dtype=D64))[1].weights
    torch.manual_seed(7)
    b = effective_grad(RLW(), torch.ones(3, dtype=D64))[1].weights
    torch.manual_seed(8)
    c = effective_grad(RLW(), torch.ones(3, dtype=D64))[1].weights
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rlw_partial_labels_softmax_over_present_tasks():
    m = RLW(seed=0)
    ctx = StepContext(tasks=("a", "c"), all_tasks=("a", "b", "c"), losses=torch.ones(2, dtype=D64))
    m.on_task_losses(ctx=ctx)
    draw = torch.randn(3, generator=torch.Generator().manual_seed(0), dtype=D64)
    torch.testing.assert_close(ctx.weights, torch.softmax(draw[[0, 2]], 0))
