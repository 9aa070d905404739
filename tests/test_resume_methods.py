"""Bit-identical resume for every stateful or random method (issue: scale and reliability).

Train N steps straight vs N/2, save, load into a fresh trainer built from another seed, N/2 more.
Methods come from plugins; each case skips when its plugin is not installed (all run in tox's
``all`` env)."""

from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe.testing import make_batch, make_conv_model, make_trainer

STACKS = {
    "famo": ["famo"],
    "nashmtl": ["nashmtl"],
    "rlw": ["rlw"],
    "pcgrad": ["pcgrad"],
    "dbmtl": ["dbmtl"],
    "gradvac": ["gradvac"],
    "graddrop": ["graddrop"],
    "uw": ["uw"],
    "dwa": ["dwa"],
    "repmtl+cagrad": ["repmtl", "cagrad"],
}
STEPS_PER_EPOCH = 2


def _loader(model, epoch):
    return [make_batch(model, seed=100 * epoch + i) for i in range(STEPS_PER_EPOCH)]


def _train(trainer, epochs, start=0):
    for epoch in range(start, start + epochs):
        trainer.fit(_loader(trainer.model, epoch), epochs=1)


def _build(stack, seed):
    return make_trainer(list(stack), model=make_conv_model(seed=seed), optimizer="adam", lr=0.01)


@pytest.mark.parametrize("name", sorted(STACKS))
def test_resume_bit_identical(tmp_path, name):
    stack = STACKS[name]
    missing = [m for m in stack if m not in mtoframe.available()]
    if missing:
        pytest.skip(f"not installed: {missing}")
    torch.manual_seed(0)
    straight = _build(stack, 0)
    _train(straight, 4)  # 4 epochs: DWA leaves its warm-up

    torch.manual_seed(0)
    first = _build(stack, 0)
    _train(first, 2)
    first.save_checkpoint(tmp_path / "c.pt")
    torch.manual_seed(999)
    resumed = _build(stack, 1)
    resumed.load_checkpoint(tmp_path / "c.pt")
    _train(resumed, 2, start=2)

    assert resumed.global_step == straight.global_step == 4 * STEPS_PER_EPOCH
    for (n, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), f"{name}: parameter {n} differs after resume"
