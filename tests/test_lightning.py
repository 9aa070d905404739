"""``mtoframe.lightning`` with the real ``lightning`` package on CPU (tox env ``lightning``).

A Lightning run of a stack makes the same parameter updates as mtoframe's Trainer, and a run
resumed from a Lightning checkpoint continues bit-identically, method state included.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")

import lightning.pytorch as pl
from lightning.pytorch.core.optimizer import LightningOptimizer

import mtoframe
from mtoframe.errors import CheckpointError, OptionError
from mtoframe.lightning import CHECKPOINT_KEY, StackModule
from mtoframe.nonfinite import NonFinitePolicy

TASKS = ("a", "b")
BATCHES = 3


def _need(*methods: str) -> None:
    missing = sorted(set(methods) - set(mtoframe.available()))
    if missing:
        pytest.skip(f"needs the plugin(s) providing {missing}")


def _parts(seed: int = 0) -> tuple[nn.Module, nn.ModuleDict]:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh())
    heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in TASKS})
    return encoder, heads


def _loader() -> torch.utils.data.DataLoader[Any]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCHES * 8, 6, generator=g)
    y = torch.randn(BATCHES * 8, 2, generator=g) * torch.tensor([1.0, 10.0])  # unequal scales: methods matter
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=False,
                                       collate_fn=lambda items: _batch(torch.utils.data.default_collate(items)))


def _batch(xy: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, y = xy
    return x, {"a": y[:, :1], "b": y[:, 1:]}


def _mse(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(p, t)


class Net(StackModule):
    """A module with its own layout: ``.backbone`` and one attribute per head."""

    def __init__(self, methods: list[Any], *, seed: int = 0, lr: float = 1e-2,
                 nonfinite: NonFinitePolicy = "raise") -> None:
        encoder, heads = _parts(seed)
        super().__init__(mtoframe.Stack(methods, tasks=TASKS, encoder=encoder, nonfinite=nonfinite))
        self.backbone, self.a, self.b = encoder, heads["a"], heads["b"]
        self.lr = lr

    def _losses(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        z = self.backbone(x)
        return {"a": _mse(self.a(z), y["a"]), "b": _mse(self.b(z), y["b"])}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        z = self.backbone(x)
        losses = {"a": _mse(self.a(z), y["a"]), "b": _mse(self.b(z), y["b"])}

        def recompute(train_mode: bool) -> dict[str, torch.Tensor]:
            self.train(train_mode)
            return self._losses(batch)

        self.stack_step(losses, features=z, shared_params=self.backbone.parameters(), recompute_losses=recompute)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([{"params": self.parameters()}, *self.stack.param_groups()], lr=self.lr)


def _fit(net: Net, *, ckpt_path: str | None = None, **trainer_kw: Any) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, **trainer_kw)
    trainer.fit(net, _loader(), ckpt_path=ckpt_path)
    return trainer


def _lightning_params(net: Net) -> dict[str, torch.Tensor]:
    out = {f"encoder.{k}": v for k, v in net.backbone.state_dict().items()}
    out.update({f"heads.{t}.{k}": v for t in TASKS for k, v in getattr(net, t).state_dict().items()})
    return out


def _start_state() -> dict[str, torch.Tensor]:
    encoder, heads = _parts(0)
    return mtoframe.MultiTaskModel(encoder=encoder, heads=dict(heads)).state_dict()


def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        return {k: v for key, sub in state.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, sub in enumerate(state) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix: state}


def _assert_same_state(a: Any, b: Any) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k


# -- the same updates as mtoframe's Trainer ---------------------------------------------------------


@pytest.mark.parametrize("precision", ["32-true", "64-true"])
def test_three_steps_of_repmtl_nashmtl_match_the_trainer(precision: str) -> None:
    _need("repmtl", "nashmtl")
    methods: list[Any] = [("repmtl", {"lambda_tsr": 0.1, "lambda_csa": 0.1}), ("nashmtl", {"update_weights_every": 2})]
    net = Net(methods)
    _fit(net, max_steps=BATCHES, precision=precision)
    assert net.stack.step == BATCHES

    dtype = torch.float64 if precision == "64-true" else torch.float32
    encoder, heads = _parts(0)
    model = mtoframe.MultiTaskModel(encoder=encoder, heads=dict(heads)).to(dtype)
    trainer = mtoframe.Trainer(model, [mtoframe.Task(t, loss=_mse) for t in TASKS], methods=methods,
                               optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))
    for x, y in _loader():
        trainer.step((x.to(dtype), {t: v.to(dtype) for t, v in y.items()}))
    ours, start = model.state_dict(), _start_state()
    moved = 0.0
    for name, value in _lightning_params(net).items():
        assert value.dtype == dtype
        torch.testing.assert_close(value, ours[name], rtol=0, atol=1e-6, msg=name)
        moved = max(moved, (value - start[name].to(dtype)).abs().max().item())
    assert moved > 1e-3  # the three steps did move the parameters


def test_epoch_level_methods_get_the_epochs_mean_losses_as_in_trainer_fit() -> None:
    _need("dwa")  # DWA's weights from the third epoch on are ratios of the two previous epochs' mean losses
    net = Net(["dwa"])
    _fit(net, max_epochs=3, precision="64-true")
    encoder, heads = _parts(0)
    model = mtoframe.MultiTaskModel(encoder=encoder, heads=dict(heads)).double()
    trainer = mtoframe.Trainer(model, [mtoframe.Task(t, loss=_mse) for t in TASKS], methods=["dwa"],
                               optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), progress=False)
    batches = [(x.double(), {t: v.double() for t, v in y.items()}) for x, y in _loader()]
    trainer.fit(batches, epochs=3)
    assert net.stack.epoch == trainer.stack.epoch == 3
    _assert_same_state(net.stack.state_dict()["methods"], trainer.stack.state_dict()["methods"])
    ours = model.state_dict()
    for name, value in _lightning_params(net).items():
        torch.testing.assert_close(value, ours[name], rtol=0, atol=1e-10, msg=name)


def test_learnable_method_parameters_follow_the_module_and_train() -> None:
    _need("uw")
    net = Net(["uw"])
    _fit(net, max_steps=BATCHES, precision="64-true")  # Lightning casts the module with .double()
    [log_var] = net.stack.parameters()
    assert log_var.dtype == torch.float64 and not torch.equal(log_var, torch.full_like(log_var, -0.5))
    opt = net.optimizers()
    assert isinstance(opt, LightningOptimizer)
    [group] = [g for g in opt.optimizer.param_groups if g.get("mtoframe_method") == "uw"]
    assert group["params"][0] is log_var and group["weight_decay"] == 0.0


def test_bf16_mixed_trains_with_the_stack_outside_autocast() -> None:
    _need("repmtl", "nashmtl")
    methods: list[Any] = ["repmtl", "nashmtl"]
    ref, net = Net(methods), Net(methods)
    _fit(ref, max_steps=BATCHES, precision="32-true")
    _fit(net, max_steps=BATCHES, precision="bf16-mixed")
    for (name, a), b in zip(_lightning_params(net).items(), _lightning_params(ref).values(), strict=True):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=0, atol=5e-2, msg=name)  # bf16 forward: close, not equal


# -- checkpoints ---------------------------------------------------------------------------------------


STATEFUL: dict[str, list[Any]] = {
    "famo+pcgrad": ["famo", "pcgrad"],  # FAMO's logits (recomputed losses), PCGrad's generator
    "uw": ["uw"],  # a learnable method parameter in the optimiser, with its Adam moments
    "repmtl+nashmtl": ["repmtl", ("nashmtl", {"update_weights_every": 2})],  # Nash-MTL's weights and counter
}


@pytest.mark.parametrize("stack", STATEFUL)
def test_resuming_from_a_lightning_checkpoint_is_bit_identical(stack: str, tmp_path: Path) -> None:
    methods = STATEFUL[stack]
    _need(*(m if isinstance(m, str) else m[0] for m in methods))
    straight = Net(methods)
    _fit(straight, max_epochs=2)

    first = Net(methods)
    trainer = _fit(first, max_epochs=1)
    ckpt = tmp_path / "one-epoch.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved[CHECKPOINT_KEY]["stack"]["step"] == BATCHES

    loaded = Net.load_from_checkpoint(ckpt, methods=methods, seed=7, weights_only=True)
    _assert_same_state(loaded.stack.state_dict(), first.stack.state_dict())

    resumed = Net(methods, seed=7)  # other initial weights: everything must come from the checkpoint
    _fit(resumed, max_epochs=2, ckpt_path=str(ckpt))
    for (name, a), b in zip(_lightning_params(resumed).items(), _lightning_params(straight).values(), strict=True):
        assert torch.equal(a, b), name
    _assert_same_state(resumed.stack.state_dict(), straight.stack.state_dict())


def test_method_state_matters_to_the_resumed_run(tmp_path: Path) -> None:
    """Without its method state the resumed FAMO run differs: the test above can fail."""
    _need("famo")

    class Forgetful(Net):
        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            fresh = copy.deepcopy(checkpoint[CHECKPOINT_KEY])
            fresh["stack"]["methods"] = Net(["famo"]).stack.state_dict()["methods"]
            super().on_load_checkpoint({**checkpoint, CHECKPOINT_KEY: fresh})

    straight = Net(["famo"])
    _fit(straight, max_epochs=2)
    trainer = _fit(Net(["famo"]), max_epochs=1)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    forgetful = Forgetful(["famo"])
    _fit(forgetful, max_epochs=2, ckpt_path=str(tmp_path / "c.ckpt"))
    assert not all(torch.equal(a, b) for a, b in zip(_lightning_params(forgetful).values(),
                                                       _lightning_params(straight).values(), strict=True))


def test_a_checkpoint_without_stack_state_is_refused(tmp_path: Path) -> None:
    _need("famo")
    trainer = _fit(Net(["famo"]), max_epochs=1)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)
    del state[CHECKPOINT_KEY]
    torch.save(state, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match=CHECKPOINT_KEY):
        _fit(Net(["famo"]), max_epochs=2, ckpt_path=str(tmp_path / "plain.ckpt"))


# -- Lightning's step machinery ---------------------------------------------------------------------


def test_clipping_in_on_before_optimizer_step_sees_the_stacks_gradients() -> None:
    _need("nashmtl")
    norms: list[tuple[float, float]] = []

    class Clipped(Net):
        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            before = torch.cat([p.grad.flatten() for p in self.parameters() if p.grad is not None]).norm().item()
            self.clip_gradients(optimizer, gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
            after = torch.cat([p.grad.flatten() for p in self.parameters() if p.grad is not None]).norm().item()
            norms.append((before, after))

    _fit(Clipped(["nashmtl"]), max_steps=BATCHES)
    assert len(norms) == BATCHES
    assert all(before > 1e-2 and after <= 1e-3 * (1 + 1e-5) for before, after in norms)


def test_a_step_the_stack_skips_makes_no_optimiser_step() -> None:
    _need("nashmtl")

    class OneNaN(Net):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            z = self.backbone(x)
            scale = float("nan") if batch_idx == 1 else 1.0
            losses = {"a": _mse(self.a(z), y["a"]) * scale, "b": _mse(self.b(z), y["b"])}
            self.stack_step(losses, features=z, shared_params=self.backbone.parameters())

    net = OneNaN(["nashmtl"], nonfinite="skip")
    trainer = _fit(net, max_epochs=1)
    assert net.stack.counters["skipped_steps"] == 1
    assert trainer.global_step == BATCHES - 1 and net.stack.step == BATCHES
    assert all(torch.isfinite(p).all() for p in net.parameters())


# -- what is refused -----------------------------------------------------------------------------------


def test_unsupported_precision_is_refused_before_training() -> None:
    net = Net([])
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(OptionError, match="bf16-true"):
        _fit(net, max_steps=1, precision="bf16-true")
    assert net.stack.step == 0
    after = [p.detach() for p in net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # refused before Lightning casts them


def test_a_multi_device_strategy_is_refused() -> None:
    from lightning.pytorch.strategies import DDPStrategy

    net = Net([])
    net.trainer = SimpleNamespace(strategy=DDPStrategy(), precision="32-true")  # type: ignore[assignment]
    with pytest.raises(OptionError, match="DDPStrategy is not supported"):
        net.setup("fit")


def test_a_stack_module_needs_a_stack() -> None:
    with pytest.raises(OptionError, match=r"mtoframe\.Stack"):
        StackModule(["nashmtl"])  # type: ignore[arg-type]


def test_importing_mtoframe_does_not_import_lightning() -> None:
    code = "import sys, mtoframe; mtoframe.available(); print(sorted(m for m in sys.modules if 'lightning' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
