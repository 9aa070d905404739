"""Hand computations the method tests compare the trainer against, as the ``hand`` fixture
(a fixture rather than an import: the repository runs pytest with ``--import-mode=importlib``)."""

from __future__ import annotations

import copy
import sys
from types import ModuleType

import pytest
import torch
from torch import Tensor

from mtoframe import MultiTaskModel
from mtoframe.testing import make_batch, make_conv_model, make_tasks, make_trainer
from mtoframe_repmtl import csa_loss, tsr_loss
from mtoframe_repmtl.repmtl import RepMTLOptions


def hand_losses(model: MultiTaskModel, batch) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    x, targets = batch
    names = tuple(t for t in model.heads.keys() if t in targets)
    tasks = {t.name: t for t in make_tasks(names)}
    z = model.encoder(x)
    losses = torch.stack([tasks[t].loss(model.heads[t](z), targets[t]) for t in names])
    return z, losses, names


def hand_regulariser(z: Tensor, losses: Tensor, *, lam_tsr: float | None = None, lam_csa: float | None = None,
                     **csa_opts) -> Tensor:
    """λ_tsr·L_tsr + λ_csa·L_csa of the saliency ∂L_t/∂Z, written out with autograd (λ and τ
    default to the method's defaults)."""
    d = RepMTLOptions()
    lam_tsr = d.lambda_tsr if lam_tsr is None else lam_tsr
    lam_csa = d.lambda_csa if lam_csa is None else lam_csa
    csa_opts.setdefault("tau", d.tau)
    s = torch.stack([torch.autograd.grad(l, z, create_graph=True)[0] for l in losses]).transpose(0, 1)
    return lam_tsr * tsr_loss(s) + lam_csa * csa_loss(s, **csa_opts)


def grads_of(objective: Tensor, params: list[torch.nn.Parameter]) -> list[Tensor]:
    out = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]


def trainer_grads(methods, model: MultiTaskModel, batch) -> list[Tensor]:
    """``.grad`` of every model parameter after one trainer step (lr 0 keeps the model put)."""
    trainer = make_trainer(methods, model=model, lr=0.0)
    trainer.step(batch)
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def conv_setup(seed: int = 0, batch: int = 4) -> tuple[MultiTaskModel, tuple]:
    model = make_conv_model(seed=seed)
    return model, make_batch(model, batch=batch, seed=seed + 1)


def clone(model: MultiTaskModel) -> MultiTaskModel:
    return copy.deepcopy(model)


@pytest.fixture
def hand() -> ModuleType:
    """This module: ``hand.hand_losses``, ``hand.hand_regulariser``, ``hand.trainer_grads`` ..."""
    return sys.modules[__name__]
