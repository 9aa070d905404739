"""DWA and STCH: epoch-level history through Trainer.fit."""

import io

import pytest
import torch
from lossweighting_helpers import D64, Observer, loader

from mtoframe.errors import MtoError
from mtoframe.testing import make_batch, make_trainer, make_vector_model
from mtoframe_lossweighting import DWA, STCH


def by_epoch(records):
    out = {}
    for r in records:
        out.setdefault(r["epoch"], []).append(r)
    return out


def test_dwa_ones_for_two_epochs_then_softmax_of_loss_ratios():
    model = make_vector_model()
    obs = Observer()
    trainer = make_trainer([DWA()], model=model, plugins=[obs], lr=0.05)
    history = trainer.fit(loader(model), epochs=4)
    epochs = by_epoch(obs.records)
    for e in (0, 1):
        for r in epochs[e]:
            torch.testing.assert_close(r["weights"], torch.ones(3, dtype=D64), check_dtype=False)
    for e in (2, 3):
        prev = torch.tensor([history[e - 2]["train_loss"][t] for t in "abc"], dtype=D64)
        last = torch.tensor([history[e - 1]["train_loss"][t] for t in "abc"], dtype=D64)
        expected = 3 * torch.softmax((last / prev) / 2, 0)
        for r in epochs[e]:
            torch.testing.assert_close(r["weights"], expected)
        assert not torch.allclose(expected, torch.ones(3, dtype=D64))


def test_dwa_state_dict_restores_weights():
    model = make_vector_model()
    m = DWA(temperature=0.5)
    make_trainer([m], model=model).fit(loader(model), epochs=3)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    other = DWA(temperature=0.5)
    other.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(other.current, m.current)


def reference_stch_grad(raw, nadir, mu):
    """Gradient w.r.t. the raw losses of LibMTL's STCH objective after the warm-up."""
    leaf = raw.clone().requires_grad_(True)
    ell = torch.log(leaf / nadir + 1e-20)
    m = ell.detach().max()
    obj = mu * torch.log(torch.exp((ell - m) / mu).sum()) * len(raw)
    (g,) = torch.autograd.grad(obj, leaf)
    return g


def grad_wrt_raw(ctx):
    (g,) = torch.autograd.grad((ctx.weights * ctx.losses).sum(), ctx.raw_losses, retain_graph=True)
    return {"grad_raw": g.detach().clone()}


@pytest.mark.parametrize("mu", [1.0, 0.3])
def test_stch_warmup_nadir_and_smooth_tchebycheff(mu):
    model = make_vector_model()
    obs = Observer(grad_wrt_raw)
    m = STCH(mu=mu, warmup_epochs=1)
    trainer = make_trainer([m], model=model, plugins=[obs], lr=0.05)
    history = trainer.fit(loader(model), epochs=3)
    epochs = by_epoch(obs.records)
    for e in (0, 1):  # warm-up epochs and the nadir epoch: Σ log L
        for r in epochs[e]:
            torch.testing.assert_close(r["losses"], torch.log(r["raw"] + 1e-20))
            torch.testing.assert_close(r["grad_raw"], 1 / (r["raw"] + 1e-20))
    nadir = torch.tensor([history[1]["train_loss"][t] for t in "abc"], dtype=D64)
    torch.testing.assert_close(m.nadir, nadir)
    for r in epochs[2]:
        torch.testing.assert_close(r["grad_raw"], reference_stch_grad(r["raw"], nadir, mu))
    assert m.state_dict()["nadir"] is not m.nadir


def test_stch_after_warmup_without_nadir_raises():
    model = make_vector_model()
    trainer = make_trainer([STCH(warmup_epochs=0)], model=model)
    trainer.epoch = 1  # as if resumed past the warm-up without the method's state
    with pytest.raises(MtoError, match="nadir"):
        trainer.step(make_batch(model))
