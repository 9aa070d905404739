"""``mtoframe.Stack`` in an own training loop: a model without ``MultiTaskModel`` gets exactly the
Trainer's ``.grad`` on every parameter, step after step (so method state matters)."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterable, Mapping
from functools import partial

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mtoframe
from mtoframe import MtoError, MultiTaskModel, Stack, StepContext, Task, Trainer

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
    seg, depth = y["seg"], y["depth"]
    assert seg is not None
    losses = {"seg": seg_loss(net.seg(z), seg)}
    if depth is not None:
        losses["depth"] = depth_loss(net.depth(z), depth)
    return z, losses


def pairs(net: Net, model: MultiTaskModel) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    mine = [("backbone", net.backbone, model.encoder), ("seg", net.seg, model.heads["seg"]),
            ("depth", net.depth, model.heads["depth"])]
    return [(f"{k}.{n}", p, q)
            for k, a, b in mine for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True)]


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
        stack.after_step(ctx, recompute_losses=partial(again, net, x, y))
        for name, p, q in pairs(net, model):
            assert (p.grad is None) == (q.grad is None), (step, name)
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=f"step {step}: {name}")
        for p, q in zip(stack.parameters(), trainer.stack.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10)
            torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    assert stack.step == trainer.global_step == 4


def again(net: Net, x: torch.Tensor, y: dict[str, torch.Tensor | None], train_mode: bool) -> dict[str, torch.Tensor]:
    """``recompute_losses`` of the own loop (the model has no mode-dependent layers)."""
    return forward(net, x, y)[1]


def _own_step(stack: Stack, net: Net, x: torch.Tensor, y: dict[str, torch.Tensor | None],
              task_params: Mapping[str, Iterable[nn.Parameter]] | None = None) -> StepContext:
    z, losses = forward(net, x, y)
    return stack.backward(losses, features=z, shared_params=net.backbone.parameters(), task_params=task_params)


def test_inferred_task_params_are_each_heads_own() -> None:
    torch.manual_seed(0)
    net = Net().double()
    x, y = batches()[0]
    explicit = Stack(["mgda"] if importlib.util.find_spec("mtoframe_gradmethods") else ["ew"], tasks=["seg", "depth"])
    ctx = _own_step(explicit, net, x, y, task_params={"seg": net.seg.parameters(), "depth": net.depth.parameters()})
    given = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    assert len(given) == len(list(net.parameters()))
    explicit.after_step(ctx)
    inferred = Stack(list(explicit), tasks=["seg", "depth"])
    inferred.after_step(_own_step(inferred, net, x, y))
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, given[n], rtol=0, atol=0)


def test_a_loss_reaching_shared_parameters_around_the_features_is_refused() -> None:
    pytest.importorskip("mtoframe_gradmethods")
    net = Net().double()
    x, y = batches()[0]
    z, losses = forward(net, x, y)
    losses["seg"] = losses["seg"] + net.backbone[0](x).sum()  # a path from a shared layer bypassing z
    with pytest.raises(MtoError, match=r"task 'seg'.*other than through features"):
        Stack(["mgda"], tasks=["seg", "depth"]).backward(losses, features=z, shared_params=net.backbone.parameters())


def test_features_the_losses_do_not_depend_on_are_refused() -> None:
    net = Net().double()
    x, y = batches()[0]
    _, losses = forward(net, x, y)
    other = net.backbone(x)  # a second forward: not the tensor the heads read
    with pytest.raises(MtoError, match=r"loss of task 'seg' does not depend on features"):
        Stack([], tasks=["seg", "depth"]).backward(losses, features=other, shared_params=net.backbone.parameters())


def test_after_step_without_recompute_losses_names_the_method() -> None:
    pytest.importorskip("mtoframe_famo")
    net = Net().double()
    stack = Stack(["famo"], tasks=["seg", "depth"], encoder=net.backbone)
    ctx = _own_step(stack, net, *batches()[0])
    with pytest.raises(MtoError, match=r"\['famo'\] recompute the losses.*recompute_losses=fn"):
        stack.after_step(ctx)


def test_a_step_must_be_closed_before_the_next() -> None:
    net = Net().double()
    stack = Stack([], tasks=["seg", "depth"])
    ctx = _own_step(stack, net, *batches()[0])
    with pytest.raises(MtoError, match=r"call stack\.after_step"):
        _own_step(stack, net, *batches()[1])
    stack.after_step(ctx)
    with pytest.raises(MtoError, match="context returned by this stack's backward"):
        stack.after_step(ctx)
    with pytest.raises(mtoframe.BatchError, match=r"unknown task\(s\) \['normals'\]"):
        stack.backward({"normals": torch.zeros(())}, features=torch.zeros(1), shared_params=[])


def test_state_dict_round_trip_continues_identically() -> None:
    pytest.importorskip("mtoframe_lossweighting")
    torch.manual_seed(0)
    net = Net().double()
    data = batches()

    def run(stack: Stack, steps: list[int], opt: torch.optim.Optimizer) -> None:
        for i in steps:
            x, y = data[i]
            opt.zero_grad(set_to_none=True)  # step 2 lacks depth: a resumed stack has not seen its head
            ctx = _own_step(stack, net, x, y)
            opt.step()
            stack.after_step(ctx)

    first = Stack(["uw"], tasks=["seg", "depth"], encoder=net.backbone)
    opt = torch.optim.SGD([{"params": net.parameters()}, *first.param_groups()], lr=0.1)
    run(first, [0, 1], opt)
    saved = copy.deepcopy(first.state_dict())
    net_saved = copy.deepcopy(net.state_dict())
    run(first, [2, 3], opt)
    straight = [p.detach().clone() for p in (*net.parameters(), *first.parameters())]

    net.load_state_dict(net_saved)
    second = Stack(["uw"], tasks=["seg", "depth"], encoder=net.backbone)
    second.load_state_dict(saved)
    assert second.step == 2
    run(second, [2, 3], torch.optim.SGD([{"params": net.parameters()}, *second.param_groups()], lr=0.1))
    for a, b in zip(straight, [*net.parameters(), *second.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_writer_gets_the_step_scalars() -> None:
    class Writer:
        def __init__(self) -> None:
            self.tags: list[tuple[str, int]] = []

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.tags.append((tag, step))

    net = Net().double()
    writer = Writer()
    stack = Stack([], tasks=["seg", "depth"], writer=writer, log_every=2)  # type: ignore[arg-type]
    for x, y in batches()[:3]:
        stack.after_step(_own_step(stack, net, x, y))
    steps = {s for _, s in writer.tags}
    assert steps == {0, 2}
    assert {("loss/seg", 0), ("weight/depth", 0), ("time/step_ms", 2), ("time/backward_ms", 0)} <= set(writer.tags)


def test_a_failed_step_is_abandoned_and_the_next_one_runs() -> None:
    net = Net().double()
    stack = Stack([], tasks=["seg", "depth"])
    x, y = batches()[0]
    z, losses = forward(net, x, y)
    losses["depth"] = losses["depth"] * float("nan")
    with pytest.raises(mtoframe.NonFiniteLossError, match=r"task\(s\) \['depth'\]"):
        stack.backward(losses, features=z, shared_params=net.backbone.parameters())
    stack.after_step(_own_step(stack, net, x, y))
    assert stack.step == 1


def test_a_skipped_step_clears_the_gradients_and_is_counted() -> None:
    net = Net().double()
    stack = Stack([], tasks=["seg", "depth"], nonfinite="skip")
    x, y = batches()[0]
    z, losses = forward(net, x, y)
    losses["seg"] = losses["seg"] * float("inf")
    with pytest.warns(RuntimeWarning, match="skipped step 0") as record:
        ctx = stack.backward(losses, features=z, shared_params=net.backbone.parameters())
    assert [w.filename for w in record] == [__file__]  # points at the caller of backward
    assert ctx.skipped and stack.counters["skipped_steps"] == 1
    assert all(p.grad is None for p in net.parameters())
    stack.after_step(ctx)
