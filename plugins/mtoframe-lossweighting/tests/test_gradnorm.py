import copy

import pytest
import torch
from lossweighting_helpers import D64, Identity, Observer, loader, mse

from mtoframe.errors import MtoError, OptionError
from mtoframe.testing import make_batch, make_trainer, make_vector_model
from mtoframe_lossweighting import GradNorm


def hand_gradnorm_grad(model, batch, xi, initial, alpha, layer):
    """Gradient of L_grad w.r.t. ξ, built with create_graph through w_t·∇_W L_t (paper/LibMTL)."""
    x, y = batch
    preds = model(x)
    losses = torch.stack([mse(preds[t], y[t]) for t in "abc"])
    xi = xi.clone().requires_grad_(True)
    w = 3 * torch.softmax(xi, 0)
    g = torch.stack([
        torch.autograd.grad(w[t] * losses[t], layer(model), retain_graph=True, create_graph=True)[0].norm()
        for t in range(3)
    ])
    rel = losses.detach() / initial
    target = (g.mean() * (rel / rel.mean()) ** alpha).detach()
    (grad,) = torch.autograd.grad((g - target).abs().sum(), xi)
    return grad


def test_layer_selection_and_errors():
    model = make_vector_model()
    m = GradNorm()
    make_trainer([m], model=model).start()
    assert m._layer[0] is model.encoder[2].weight
    with pytest.raises(OptionError, match="no trainable encoder parameter"):
        make_trainer([GradNorm(layer="nope")], model=make_vector_model()).start()
    with pytest.raises(OptionError, match="initial_losses"):
        GradNorm(initial_losses="later")


@pytest.mark.parametrize("stack_transform", [False, True])
def test_first_step_mode_weight_gradient_and_model_update(stack_transform):
    model = make_vector_model()
    ref = copy.deepcopy(model)
    ew_model = copy.deepcopy(model)
    batch = make_batch(model)
    m = GradNorm(initial_losses="first_step", alpha=1.5)
    stack = [m, Identity()] if stack_transform else [m]
    trainer = make_trainer(stack, model=model, lr=0.05)
    ctx = trainer.step(batch)
    assert "gradnorm" in ctx.extra_losses
    # at the first step L~ = 1, so the target is the mean norm; w = 1 so the model moves as EW
    x, y = batch
    with torch.no_grad():
        p0 = ref(x)
    initial = torch.stack([mse(p0[t], y[t]) for t in "abc"])
    expected = hand_gradnorm_grad(ref, batch, torch.zeros(3, dtype=D64), initial, 1.5, lambda mm: [mm.encoder[2].weight])
    torch.testing.assert_close(m.param.detach(), -0.05 * expected)
    make_trainer([], model=ew_model, lr=0.05).step(batch)
    for p, q in zip(model.parameters(), ew_model.parameters()):
        torch.testing.assert_close(p, q)

    # second step: r_t ≠ 1 and w ≠ 1; compare the ξ gradient again
    xi = m.param.detach().clone()
    expected = hand_gradnorm_grad(model, batch, xi, initial, 1.5, lambda mm: [mm.encoder[2].weight])
    trainer.step(batch)
    torch.testing.assert_close(m.param.detach(), xi - 0.05 * expected)


def test_first_epoch_mode_is_ew_then_balances_from_epoch_one():
    model = make_vector_model()
    obs = Observer()
    m = GradNorm(layer="all")
    trainer = make_trainer([m], model=model, plugins=[obs], lr=0.05)
    history = trainer.fit(loader(model), epochs=2)
    e0 = [r for r in obs.records if r["epoch"] == 0]
    e1 = [r for r in obs.records if r["epoch"] == 1]
    assert all(r["extra"] == [] for r in e0)
    assert all(torch.equal(r["weights"].double(), torch.ones(3, dtype=D64)) for r in e0)
    assert all(r["extra"] == ["gradnorm"] for r in e1)
    torch.testing.assert_close(m.initial, torch.tensor([history[0]["train_loss"][t] for t in "abc"], dtype=D64))
    torch.testing.assert_close(m.task_weights().sum(), torch.tensor(3.0, dtype=D64))
    assert not torch.allclose(m.task_weights(), torch.ones(3, dtype=D64))


def test_renormalise_keeps_weights_summing_to_T():
    model = make_vector_model()
    m = GradNorm(initial_losses="first_step", parametrisation="renormalise", lr=0.5)
    trainer = make_trainer([m], model=model)
    for s in range(3):
        trainer.step(make_batch(model, seed=s))
    torch.testing.assert_close(m.param.detach().sum(), torch.tensor(3.0, dtype=D64))
    assert not torch.allclose(m.param.detach(), torch.ones(3, dtype=D64))


def test_state_round_trip():
    model = make_vector_model()
    m = GradNorm(initial_losses="first_step")
    make_trainer([m], model=model).step(make_batch(model))
    other = GradNorm(initial_losses="first_step")
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other.param, m.param)
    torch.testing.assert_close(other.initial, m.initial)


def test_needs_a_trainer():
    from mtoframe import StepContext

    ctx = StepContext(tasks=("a",), losses=torch.ones(1))
    with pytest.raises(MtoError, match="needs a trainer"):
        GradNorm().on_task_losses(ctx=ctx)
