"""The ``repmtl`` method through the trainer: exact objective, second-order path, options, logs."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import mtoframe
from mtoframe import Role, Trainer
from mtoframe.errors import BatchError, OptionError
from mtoframe.testing import make_batch, make_trainer, make_vector_model
from mtoframe_repmtl import RepMTL
from mtoframe_repmtl.repmtl import RepMTLOptions


def test_registered_with_its_options() -> None:
    assert "repmtl" in mtoframe.available()
    m = mtoframe.create("repmtl", tau=0.1, negatives="task")
    assert isinstance(m, RepMTL)
    assert m.options.lambda_tsr == m.options.lambda_csa == RepMTLOptions().lambda_tsr and m.options.tau == 0.1
    assert "negatives='task'" in repr(m)
    assert m.rep_grads == "differentiable" and m.grad_space is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lambda_tsr": -0.1}, "lambda_tsr"),
        ({"lambda_csa": float("nan")}, "lambda_csa"),
        ({"tau": 0.0}, "tau"),
        ({"negatives": "all"}, "negatives.*'anchor', 'task'"),
        ({"use_tsr": 1}, "use_tsr.*True or False"),
        ({"temperature": 0.1}, "unknown option"),
    ],
)
def test_bad_options_fail_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        RepMTL(**kwargs)


def test_roles_follow_log_transform() -> None:
    assert RepMTL().roles == Role.REGULARISER
    assert RepMTL(log_transform=True).roles == Role.REGULARISER | Role.LOSS
    assert RepMTL(use_tsr=False, use_csa=False).rep_grads == "none"


@pytest.mark.parametrize("make", ["conv", "vector"])
def test_lambda_zero_reproduces_ew_exactly(make: str, hand) -> None:
    if make == "conv":
        model, _ = hand.conv_setup()
    else:
        model = make_vector_model()
    ew_model, rep_model = hand.clone(model), hand.clone(model)
    ew = make_trainer([], model=ew_model, optimizer="adam", lr=0.01)
    rep = make_trainer([RepMTL(lambda_tsr=0.0, lambda_csa=0.0)], model=rep_model, optimizer="adam", lr=0.01)
    for step in range(2):
        batch = make_batch(model, batch=4, seed=10 + step)
        ew.step(batch)
        ctx = rep.step(batch)
        assert set(ctx.extra_losses) == {"tsr", "csa"}  # the terms ran, with zero weight
    for a, b in zip(ew_model.parameters(), rep_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "opts",
    [{}, {"negatives": "task", "positive_in_denominator": True, "tau": 0.2}, {"lambda_tsr": 1.5, "lambda_csa": 0.7}],
)
def test_gradients_equal_hand_objective_and_reach_encoder_and_heads(opts: dict, hand) -> None:
    model, batch = hand.conv_setup()
    d = RepMTLOptions()
    lam_tsr, lam_csa = opts.get("lambda_tsr", d.lambda_tsr), opts.get("lambda_csa", d.lambda_csa)
    csa_opts = {k: v for k, v in opts.items() if not k.startswith("lambda")}
    ew = hand.trainer_grads([], hand.clone(model), batch)
    got = hand.trainer_grads([RepMTL(**opts)], m := hand.clone(model), batch)

    ref = hand.clone(model)
    z, losses, _ = hand.hand_losses(ref, batch)
    reg = hand.hand_regulariser(z, losses, lam_tsr=lam_tsr, lam_csa=lam_csa, **csa_opts)
    params = list(ref.parameters())
    want_task, want_reg = hand.grads_of(losses.sum(), params), hand.grads_of(reg, params)
    for g, t, r in zip(got, want_task, want_reg):
        torch.testing.assert_close(g, t + r, rtol=1e-10, atol=1e-13)

    # λ > 0 moves both the encoder and every head away from EW: the second-order path is live
    names = [n for n, _ in m.named_parameters()]
    for prefix in ("encoder.", "heads.a.", "heads.b.", "heads.c."):
        diff = max((g - e).abs().max().item() for n, g, e in zip(names, got, ew) if n.startswith(prefix))
        assert diff > 1e-6, prefix


def test_gradcheck_through_a_tiny_model(hand) -> None:
    """The regulariser as a function of the parameters, differentiated through the saliency."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 1, generator=g, dtype=torch.float64)
    w_enc = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w_heads = torch.randn(2, 3, 1, generator=g, dtype=torch.float64, requires_grad=True)

    def regulariser(w_enc: torch.Tensor, w_heads: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(x @ w_enc)
        losses = torch.stack([((torch.sin(z) @ w_heads[t] - y[t]) ** 2).mean() for t in range(2)])
        return hand.hand_regulariser(z, losses, tau=0.5)

    assert torch.autograd.gradcheck(regulariser, (w_enc, w_heads))


def test_log_transform_regularises_the_log_losses_saliency(hand) -> None:
    model, batch = hand.conv_setup()
    got = hand.trainer_grads([RepMTL(log_transform=True)], hand.clone(model), batch)
    ref = hand.clone(model)
    z, losses, _ = hand.hand_losses(ref, batch)
    logs = torch.log(losses + 1e-8)
    objective = logs.sum() + hand.hand_regulariser(z, logs)
    for g, w in zip(got, hand.grads_of(objective, list(ref.parameters()))):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


def test_terms_can_be_switched_off(hand) -> None:
    model, batch = hand.conv_setup()
    trainer = make_trainer([RepMTL(use_csa=False)], model=hand.clone(model), lr=0.0)
    assert set(trainer.step(batch).extra_losses) == {"tsr"}
    off = hand.trainer_grads([RepMTL(use_tsr=False, use_csa=False)], hand.clone(model), batch)
    for a, b in zip(off, hand.trainer_grads([], hand.clone(model), batch)):
        assert torch.equal(a, b)


def test_partial_labels_use_present_tasks_only(hand) -> None:
    model, (x, targets) = hand.conv_setup()
    batch = (x, {"a": targets["a"], "c": targets["c"]})
    got = hand.trainer_grads([RepMTL()], hand.clone(model), batch)
    ref = hand.clone(model)
    z, losses, names = hand.hand_losses(ref, batch)
    assert names == ("a", "c")
    objective = losses.sum() + hand.hand_regulariser(z, losses)
    for g, w in zip(got, hand.grads_of(objective, list(ref.parameters()))):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


def test_logs_regularisers_cosines_and_entropy(tmp_path, hand) -> None:
    model, batch = hand.conv_setup()
    trainer = make_trainer([RepMTL()], model=model, log_dir=tmp_path, log_every=1)
    ctx = trainer.step(batch)
    trainer.close()
    s = ctx.scalars
    for tag in ("reg/tsr", "reg/csa", "repmtl/cos_pos", "repmtl/cos_neg", *(f"repmtl/entropy/{t}" for t in "abc")):
        assert tag in s, tag
    entropy = sum(float(s[f"repmtl/entropy/{t}"]) for t in "abc")
    assert entropy == pytest.approx(float(s["reg/tsr"]) / RepMTLOptions().lambda_tsr, rel=1e-12)
    assert 0 <= entropy <= math.log(3)
    assert -1 <= float(s["repmtl/cos_neg"]) <= 1 and 0 <= float(s["repmtl/cos_pos"]) <= 1


def test_batch_of_one_is_a_clear_error(hand) -> None:
    model, _ = hand.conv_setup()
    trainer = make_trainer([RepMTL()], model=model)
    with pytest.raises(BatchError, match="at least 2 samples"):
        trainer.step(make_batch(model, batch=1))


def test_mixed_precision_terms_in_float32(hand) -> None:
    model, batch = hand.conv_setup()
    model = model.float()
    x, targets = batch
    batch = (x.float(), {k: v.float() for k, v in targets.items()})
    if "amp" in inspect.signature(Trainer).parameters:
        trainer = make_trainer([RepMTL()], model=model, amp=torch.bfloat16)
        ctx = trainer.step(batch)
    else:  # a core without the amp option: the user's own autocast
        trainer = make_trainer([RepMTL()], model=model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ctx = trainer.step(batch)
    assert ctx.z.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in ctx.extra_losses.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_reg_grad_ratio_equals_hand_formula(tmp_path, hand) -> None:
    model, batch = hand.conv_setup()
    ref = hand.clone(model)
    trainer = make_trainer([RepMTL()], model=model, log_dir=tmp_path, log_every=1, lr=0.0)
    ratio = float(trainer.step(batch).scalars["repmtl/reg_grad_ratio"])
    trainer.close()
    z, losses, _ = hand.hand_losses(ref, batch)
    (task_grad,) = torch.autograd.grad(losses.sum(), z, retain_graph=True)
    (reg_grad,) = torch.autograd.grad(hand.hand_regulariser(z, losses), z)
    assert ratio == pytest.approx(float(reg_grad.norm() / task_grad.norm()), rel=1e-8)
    assert ratio > 0


def test_reg_grad_ratio_only_on_logging_steps(tmp_path, hand) -> None:
    model, batch = hand.conv_setup()
    trainer = make_trainer([RepMTL()], model=model, log_dir=tmp_path, log_every=2)
    assert "repmtl/reg_grad_ratio" in trainer.step(batch).scalars
    assert "repmtl/reg_grad_ratio" not in trainer.step(batch).scalars
    trainer.close()


def test_multi_input_batches_are_a_clear_error(hand) -> None:
    model, (x, targets) = hand.conv_setup()
    trainer = make_trainer([RepMTL()], model=model)
    batch = {t: (x, targets[t]) for t in targets}
    with pytest.raises(mtoframe.errors.MtoError, match="multi-input.*own images"):
        trainer.step(batch)


def test_a_representation_without_channels_is_a_clear_error() -> None:
    # Z of shape [B] (one number per sample): there is no channel axis to compare saliencies on
    from torch import nn

    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(8, 1, dtype=torch.float64), nn.Flatten(0))
    heads = {t: nn.Sequential(nn.Unflatten(0, (-1, 1)), nn.Linear(1, 1, dtype=torch.float64)) for t in "abc"}
    model = mtoframe.MultiTaskModel(encoder=enc, heads=heads)
    trainer = make_trainer([RepMTL()], model=model)
    with pytest.raises(mtoframe.errors.MtoError, match=r"repmtl needs a representation with channels.*shape \(8,\)"):
        trainer.step(make_batch(make_vector_model(), batch=8))
