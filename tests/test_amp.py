"""Mixed precision: autocast (bfloat16 on CPU) and GradScaler around per-task gradients."""

from __future__ import annotations

import pytest
import torch

from mtoframe import OptionError, hookimpl
from mtoframe.testing import PoisonGradient
from mtoframe.testing.factories import make_batch, make_trainer, make_vector_model

from helpers import ScaledSum, params_of


class Probe(ScaledSum):
    """ScaledSum that records what the aggregator is handed."""

    name = "probe"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[torch.Tensor] = []
        self.saliency_dtypes: list[torch.dtype] = []

    @hookimpl
    def on_shared_grads(self, ctx):
        self.seen.append(ctx.grads.detach().clone())
        if ctx.grad_space == "representation":
            self.saliency_dtypes.append(ctx.rep_grads().dtype)
        super().on_shared_grads(ctx)


def _bf16_run(methods, model, steps=15):
    trainer = make_trainer(methods, model=model, optimizer="adam", lr=0.01, amp=torch.bfloat16)
    first = last = None
    for step in range(steps):
        ctx = trainer.step(make_batch(model, batch=8, seed=1))
        assert ctx.z.dtype == torch.bfloat16  # autocast really ran
        assert ctx.losses.dtype == torch.float32  # methods see float32 losses
        total = float(ctx.raw_losses.detach().sum())
        first = total if first is None else first
        last = total
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.counters["skipped_steps"] == 0
    assert last < first  # it trains, not merely survives
    return trainer


@pytest.mark.parametrize("methods", [[], [ScaledSum()], [ScaledSum(space="representation")]], ids=["ew", "scaledsum", "scaledsum-rep"])
def test_bfloat16_autocast_trains_core_stacks(methods):
    _bf16_run(methods, make_vector_model(dtype=torch.float32))


def test_bfloat16_solver_and_saliency_inputs_are_float32():
    probe = Probe(space="representation")
    _bf16_run([probe], make_vector_model(dtype=torch.float32), steps=2)
    assert all(g.dtype == torch.float32 for g in probe.seen)
    assert probe.saliency_dtypes == [torch.float32, torch.float32]


@pytest.mark.parametrize("stack", [["nashmtl"], ["repmtl"], ["repmtl", "nashmtl"]], ids="+".join)
def test_bfloat16_autocast_trains_plugins(stack):
    for name in stack:
        pytest.importorskip(f"mtoframe_{name}")
    # B×C representation: Rep-MTL's saliency code path is the same, bfloat16 convolutions on CPU are slow
    _bf16_run(stack, make_vector_model(dtype=torch.float32), steps=8)


def _scaled_pair(methods_factory, scaler):
    """(params, what the probe saw) after 3 steps without and with ``scaler`` (float32, no autocast)."""
    out = []
    for s in (None, scaler):
        model = make_vector_model(dtype=torch.float32)
        methods = methods_factory()
        trainer = make_trainer(methods, model=model, grad_scaler=s)
        for step in range(3):
            trainer.step(make_batch(model, batch=8, seed=step))
        out.append((params_of(model), methods))
    return out


@pytest.mark.parametrize("space", ["params", "representation"])
def test_grad_scaler_is_transparent_to_methods_and_update(space):
    (plain, m_plain), (scaled, m_scaled) = _scaled_pair(lambda: [Probe(space=space)], torch.amp.GradScaler("cpu", init_scale=2.0**12))
    # scaling by a power of two and unscaling is exact: solvers see the true G, the update is the same
    for a, b in zip(m_plain[0].seen, m_scaled[0].seen):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_grad_scaler_loss_only_stack_matches_unscaled():
    (plain, _), (scaled, _) = _scaled_pair(lambda: [], torch.amp.GradScaler("cpu", init_scale=2.0**12))
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("methods", [[], ["probe"], ["probe-rep"]])
def test_forced_inf_is_skipped_backed_off_and_counted(methods):
    probe = Probe(space="representation" if methods == ["probe-rep"] else "params") if methods else None
    model = make_vector_model(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    trainer = make_trainer([probe] if probe else [], model=model, grad_scaler=scaler,
                           plugins=[PoisonGradient(steps=[0], value=float("inf"))], nonfinite="raise")
    before = params_of(model)
    ctx = trainer.step(make_batch(model, batch=8, seed=0))
    # an overflow is the scaler's business, not a fault: no NonFiniteLossError, nothing moved
    assert ctx.skipped
    assert trainer.counters["amp_skipped_steps"] == 1 and trainer.counters["skipped_steps"] == 0
    assert scaler.get_scale() == 2.0**7
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(model)))
    if probe is not None:
        assert probe.seen == []  # the aggregator never saw the non-finite G
    ctx = trainer.step(make_batch(model, batch=8, seed=1))
    assert not ctx.skipped
    assert trainer.counters["amp_skipped_steps"] == 1
    assert scaler.get_scale() == 2.0**7
    assert any(not torch.equal(a, b) for a, b in zip(before, params_of(model)))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_amp_options_are_checked():
    with pytest.raises(OptionError, match="bfloat16"):
        make_trainer([], amp=torch.float32)
    with pytest.raises(OptionError, match="GradScaler"):
        make_trainer([], grad_scaler=object())
