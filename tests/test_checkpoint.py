"""Checkpoints: atomic, weights_only-loadable, bit-identical resume."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import RandomWeights, ScaledSum

import mtoframe
from mtoframe.testing import make_batch, make_trainer, make_vector_model


def _run(trainer, steps, start=0):
    for s in range(start, start + steps):
        x, ys = make_batch(trainer.model, seed=100 + s)
        # the global RNG feeds into the step, so resuming must restore it too
        x = x + 1e-3 * torch.randn_like(x)
        trainer.step((x, ys))


def _build(seed, methods_factory, **kw):
    return make_trainer(methods_factory(), model=make_vector_model(seed=seed), optimizer="adam", lr=0.01, **kw)


STACKS = {
    "ew": lambda: [],
    "random+sum": lambda: [RandomWeights(seed=3), ScaledSum(scale=0.7)],
}


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_resume_is_bit_identical(tmp_path, stack):
    torch.manual_seed(0)
    straight = _build(0, STACKS[stack])
    _run(straight, 6)

    torch.manual_seed(0)
    first = _build(0, STACKS[stack])
    _run(first, 3)
    first.save_checkpoint(tmp_path / "ckpt.pt")
    torch.manual_seed(12345)  # the resumed process starts from different global RNG and weights
    resumed = _build(7, STACKS[stack])
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    _run(resumed, 3, start=3)

    assert resumed.global_step == straight.global_step == 6
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for m1, m2 in zip(straight.stack, resumed.stack):
        s1, s2 = m1.state_dict(), m2.state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_checkpoint_loads_with_weights_only(tmp_path):
    trainer = _build(0, STACKS["random+sum"])
    _run(trainer, 2)
    trainer.save_checkpoint(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["step"] == 2 and state["stack"] == ["randomweights", "scaledsum"]


def test_crash_before_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    trainer = _build(0, STACKS["ew"])
    trainer.save_checkpoint(tmp_path / "c.pt")
    _run(trainer, 2)

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(mtoframe.CheckpointError, match="power cut"):
        trainer.save_checkpoint(tmp_path / "c.pt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 0


def test_checkpoint_from_another_stack_is_rejected(tmp_path):
    _build(0, STACKS["ew"]).save_checkpoint(tmp_path / "c.pt")
    other = _build(0, STACKS["random+sum"])
    with pytest.raises(mtoframe.MtoError, match=r"written by the stack \[\], this trainer has \['randomweights', 'scaledsum'\]"):
        other.load_checkpoint(tmp_path / "c.pt")


def test_grad_scaler_state_is_checkpointed(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    trainer = make_trainer([], model=make_vector_model(), grad_scaler=scaler)
    # the first 3 optimiser steps succeed, so GradScaler's growth tracker advances
    for s in range(3):
        trainer.step(make_batch(trainer.model, seed=s))
    assert scaler._growth_tracker.item() == 3
    trainer.save_checkpoint(tmp_path / "c.pt")
    fresh_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    fresh = make_trainer([], model=make_vector_model(), grad_scaler=fresh_scaler)
    fresh.load_checkpoint(tmp_path / "c.pt")
    assert fresh_scaler.state_dict() == scaler.state_dict()
