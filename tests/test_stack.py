"""``mtoframe.Stack`` in an own training loop: a model without ``MultiTaskModel`` gets exactly the
Trainer's ``.grad`` on every parameter, step after step (so method state matters)."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mtoframe
from mtoframe import MtoError, MultiTaskModel, Stack, Task, Trainer

PLUGIN = {"nashmtl": "mtoframe_nashmtl", "cagrad": "mtoframe_cagrad", "pcgrad": "mtoframe_gradmethods",
          "mgda": "mtoframe_gradmethods", "famo": "mtoframe_famo", "repmtl": "mtoframe_repmtl",
          "dbmtl": "mtoframe_dbmtl", "uw": "mtoframe_lossweighting"}
STACKS = [["ew"], ["nashmtl"], ["cagrad"], ["pcgrad"], ["mgda"], ["famo"], ["repmtl"], ["repmtl", "nashmtl"],
          ["dbmtl"], ["uw"]]


class Net(nn.Module):
    """Its own layout: ``backbone``, ``seg``, ``depth``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.seg = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
        self.depth = nn.Linear(6, 1)


def seg_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(pred, y)


def depth_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (pred - y).abs().mean()


def batches() -> list[tuple[torch.Tensor, dict[str, torch.Tensor | None]]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(4):
        x = torch.randn(10, 5, generator=g, dtype=torch.float64)
        seg = torch.randint(0, 3, (10,), generator=g)
        depth = torch.randn(10, 1, generator=g, dtype=torch.float64)
        out.append((x, {"seg": seg, "depth": None if i == 2 else depth}))  # step 2: partial labels
    return out


def forward(net: Net, x: torch.Tensor, y: dict[str, torch.Tensor | None]
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The user's own forward: features and the losses of the tasks labelled in the batch."""
    z = net.backbone(x)
    losses = {"seg": seg_loss(net.seg(z), y["seg"])}
    if y["depth"] is not None:
        losses["depth"] = depth_loss(net.depth(z), y["depth"])
    return z, losses


def pairs(net: Net, model: MultiTaskModel) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    mine = [("backbone", net.backbone, model.encoder), ("seg", net.seg, model.heads["seg"]),
            ("depth", net.depth, model.heads["depth"])]
    return [(f"{k}.{n}", p, q) for k, a, b in mine for (n, p), q in zip(a.named_parameters(), b.parameters())]


@pytest.mark.parametrize("names", STACKS, ids="+".join)
def test_own_loop_gets_the_trainers_grads(names: list[str]) -> None:
    for n in names:
        if n in PLUGIN:
            pytest.importorskip(PLUGIN[n])
    torch.manual_seed(0)
    net = Net().double()
    model = MultiTaskModel(encoder=copy.deepcopy(net.backbone),
                           heads={"seg": copy.deepcopy(net.seg), "depth": copy.deepcopy(net.depth)})
    tasks = [Task("seg", loss=seg_loss), Task("depth", loss=depth_loss)]
    trainer = Trainer(model, tasks, names, torch.optim.SGD(model.parameters(), lr=0.1))
    stack = Stack(names, tasks=["seg", "depth"], encoder=net.backbone)
    opt = torch.optim.SGD([{"params": net.parameters()}, *stack.param_groups()], lr=0.1)
    for step, (x, y) in enumerate(batches()):
        trainer.step((x, y))
        z, losses = forward(net, x, y)
        ctx = stack.backward(losses, features=z, shared_params=net.backbone.parameters())
        assert not ctx.skipped and ctx.tasks == tuple(losses)
        opt.step()
        stack.after_step(ctx, recompute_losses=lambda train_mode, x=x, y=y: forward(net, x, y)[1])
        for name, p, q in pairs(net, model):
            assert (p.grad is None) == (q.grad is None), (step, name)
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=f"step {step}: {name}")
        for p, q in zip(stack.parameters(), trainer.stack.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10)
            torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    assert stack.step == trainer.global_step == 4
