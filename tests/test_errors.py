"""The error catalogue: each bad input fails with a message naming the problem and what is allowed.

Entries that need a plugin or the config loader skip when those are not installed (they run in the
tox ``all`` env)."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers import Negate, ScaledSum
from torch import nn

import mtoframe
from mtoframe import hookimpl
from mtoframe.cli import main
from mtoframe.registry import get_registry
from mtoframe.testing import make_batch, make_tasks, make_trainer, make_vector_model


def _trainer(**kw):
    return make_trainer([], **kw)


def _batch():
    return make_batch(make_vector_model())


class TupleEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 6).double()

    def forward(self, x):
        z = self.lin(x)
        return (z, z)


def _tuple_rep_model():
    heads = {t: nn.Sequential() for t in "abc"}
    for t in "abc":
        heads[t] = type("First", (nn.Module,), {"forward": lambda self, z: z[0][:, :1]})()
    return mtoframe.MultiTaskModel(encoder=TupleEncoder(), heads=heads)


def _repmtl_batch_of_one():
    pytest.importorskip("mtoframe_repmtl")
    model = make_vector_model()
    trainer = make_trainer(["repmtl"], model=model)
    x, ys = make_batch(model, batch=1)
    trainer.step((x, ys))


def _config(text: str):
    config = pytest.importorskip("mtoframe.config")
    return config.parse_config(text)


CATALOGUE: list[tuple[str, Callable[[], object], type[BaseException], str]] = [
    ("unknown method", lambda: mtoframe.create("nashmtll"), mtoframe.UnknownMethodError,
     r"unknown method 'nashmtll'; installed methods: .*ew"),
    ("unknown option", lambda: ScaledSum(scael=1.0), mtoframe.OptionError,
     r"unknown option\(s\) 'scael' .* allowed: space, scale"),
    ("bad option value", lambda: ScaledSum(scale=-2.0), mtoframe.OptionError,
     r"option 'scale' .* must be a number in \[0.0, inf\), got -2.0"),
    ("bad option choice", lambda: ScaledSum(space="Z"), mtoframe.OptionError,
     r"option 'space' .* one of 'params', 'representation'; got 'Z'"),
    ("aggregator before transform", lambda: make_trainer([ScaledSum(), Negate()]), mtoframe.StackError,
     r"aggregator 'scaledsum' is followed by gradient transform\(s\) \['negatefirst'\].*must come last"),
    ("method twice", lambda: make_trainer(["ew", "ew"]), mtoframe.StackError, r"'ew' appears 2 times .* use it once"),
    ("method spec of the wrong type", lambda: make_trainer([42]), mtoframe.OptionError,
     r"a method must be a name, a \(name, options-dict\) pair or a Method object; got 42"),
    ("task names do not match heads",
     lambda: mtoframe.Trainer(make_vector_model(), make_tasks(["a", "b", "x"]),
                              optimizer=torch.optim.SGD(make_vector_model().parameters(), lr=0.1)),
     mtoframe.MtoError, r"task names \['a', 'b', 'x'\] do not match the model's heads \['a', 'b', 'c'\]"),
    ("missing target for every task", lambda: _trainer().step((_batch()[0], {"a": None})), mtoframe.BatchError,
     r"no target for any task; expected some of \['a', 'b', 'c'\]"),
    ("target for an unknown task", lambda: _trainer().step((_batch()[0], {"depth": _batch()[1]["a"]})),
     mtoframe.BatchError, r"unknown task\(s\) \['depth'\]; the trainer's tasks are \['a', 'b', 'c'\]"),
    ("wrong target shape",
     lambda: _trainer().step((_batch()[0], {"a": torch.zeros(5, 3, dtype=torch.float64)})),
     mtoframe.BatchError, r"loss of task 'a' failed .* check the target's shape and dtype"),
    ("batch not a pair", lambda: _trainer().step([1, 2, 3]), mtoframe.BatchError,
     r"a batch must be a pair \(inputs, \{task_name: target\}\) .* got list of length 3"),
    ("non-finite learning rate",
     lambda: mtoframe.Trainer(make_vector_model(), make_tasks(),
                              optimizer=torch.optim.SGD(make_vector_model().parameters(), lr=float("inf"))),
     mtoframe.OptionError, r"learning rate of optimizer group 0 must be a finite number, got inf"),
    ("missing optimizer", lambda: mtoframe.Trainer(make_vector_model(), make_tasks()), mtoframe.OptionError,
     r"Trainer needs optimizer="),
    ("bad non-finite policy", lambda: _trainer(nonfinite="ignore"), mtoframe.OptionError,
     r"nonfinite must be 'raise' or 'skip', got 'ignore'"),
    ("bad log_every", lambda: _trainer(log_every=0), mtoframe.OptionError, r"log_every must be a positive integer, got 0"),
    ("non-finite loss (raise policy)",
     lambda: _trainer().step((_batch()[0], {"b": torch.full((8, 1), float("nan"), dtype=torch.float64)})),
     mtoframe.NonFiniteLossError, r"non-finite loss at step 0: task\(s\) \['b'\]; nonfinite='skip'"),
    ("representation-space method without a tensor representation",
     lambda: make_trainer([ScaledSum(space="representation")], model=_tuple_rep_model()).step(_batch()),
     mtoframe.MtoError, r"representation gradients need a tensor representation ctx.z"),
    ("model is not a MultiTaskModel",
     lambda: mtoframe.Trainer(nn.Linear(2, 2), make_tasks(), optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1)),
     mtoframe.MtoError, r"model must be an mtoframe.MultiTaskModel, got Linear"),
    ("aggregate with losses of the wrong length",
     lambda: mtoframe.aggregate(ScaledSum(), torch.zeros(3, 4), losses=torch.ones(2)), mtoframe.MtoError,
     r"losses must have shape \(3,\) to match grads, got \(2,\)"),
    ("Rep-MTL with batch size 1", _repmtl_batch_of_one, mtoframe.MtoError, r"(?i)batch size|B ?>= ?2|at least 2"),
    ("config file syntax error", lambda: _config("methods = [\n"), mtoframe.OptionError, r"(?i)line \d+"),
    ("unknown config key", lambda: _config('epochs = 1\nepocs = 2\n'), mtoframe.OptionError, r"epocs"),
]


@pytest.mark.parametrize(("what", "action", "error", "message"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_error_catalogue(what, action, error, message):
    with pytest.raises(error) as info:
        action()
    assert re.search(message, str(info.value)), f"{what}: message was {info.value}"


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 15


# -- issue 14: nothing lost, nothing hijacked ----------------------------------------------------

def _nan_grad_loss(p, t):
    """Finite (the MSE) with a NaN gradient: d sqrt(x)/dx at 0 is inf, times 0."""
    return torch.sqrt(((p - t) * 0).pow(2).mean()) + nn.functional.mse_loss(p, t)


def _nan_grad_trainer(nonfinite, methods=()):
    torch.manual_seed(0)
    m = mtoframe.MultiTaskModel(encoder=nn.Linear(4, 8), heads={"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    f = lambda p, t: nn.functional.mse_loss(p, t)  # noqa: E731
    tasks = [mtoframe.Task("a", loss=_nan_grad_loss), mtoframe.Task("b", loss=f)]
    return mtoframe.Trainer(m, tasks, list(methods), optimizer=torch.optim.SGD(m.parameters(), lr=1e-3),
                            nonfinite=nonfinite)


def _nan_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g), {"a": torch.randn(6, 1, generator=g), "b": torch.randn(6, 1, generator=g)}


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_nan_gradient_of_a_finite_loss_is_skipped_before_the_optimiser_step():
    tr = _nan_grad_trainer("skip")
    before = _params(tr)
    ctx = tr.step(_nan_batch())
    assert ctx.skipped and tr.counters["skipped_steps"] == 1
    for p, b in zip(tr.model.parameters(), before):
        assert torch.equal(p, b)  # untouched, in particular not NaN


def test_nan_gradient_of_a_finite_loss_raises_naming_the_parameters():
    tr = _nan_grad_trainer("raise")
    before = _params(tr)
    with pytest.raises(mtoframe.NonFiniteLossError, match=r"non-finite gradient at step 0 \(the losses are finite\): "
                       r"parameter\(s\) encoder.weight, encoder.bias, heads.a.weight"):
        tr.step(_nan_batch())
    assert all(torch.equal(p, b) for p, b in zip(tr.model.parameters(), before))


def test_nan_gradient_does_not_poison_famo_state():
    pytest.importorskip("mtoframe_famo")
    tr = _nan_grad_trainer("skip", ["famo"])
    for _ in range(3):
        tr.step(_nan_batch())
    famo = tr.stack[0]
    assert bool(torch.isfinite(famo.logits).all())
    assert all(bool(torch.isfinite(p).all()) for p in tr.model.parameters())


def test_first_skip_for_a_nan_gradient_does_not_blame_missing_targets():
    # the ignore_index advice is for a non-finite task loss (see the ignore_index test below)
    with pytest.warns(RuntimeWarning, match=r"skipped step 0 .*non-finite gradient at step 0") as record:
        _nan_grad_trainer("skip").step(_nan_batch())
    assert not any("ignore_index" in str(w.message) for w in record)
    assert [w.filename for w in record] == [__file__]


#: gradient methods whose solver raises on a non-finite gradient matrix (plugin module, method)
REFUSING = [("mtoframe_gradmethods", "mgda"), ("mtoframe_gradmethods", "upgrad"),
            ("mtoframe_torchjd", "torchjd.alignedmtl"), ("mtoframe_torchjd", "torchjd.imtlg")]


def _refused_trainer(nonfinite, method):
    """Three tasks (TorchJD's AlignedMTL solves two in closed form, without raising); task a's
    gradient is NaN, its loss finite, while ``poisoned[0]`` holds."""
    poisoned = [True]

    def loss_a(p, t):
        return _nan_grad_loss(p, t) if poisoned[0] else nn.functional.mse_loss(p, t)

    model = make_vector_model()
    tasks = [mtoframe.Task("a", loss=loss_a), *make_tasks(("b", "c"))]
    tr = mtoframe.Trainer(model, tasks, [method], optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                          nonfinite=nonfinite)
    return tr, make_batch(model), poisoned


@pytest.mark.parametrize(("module", "method"), REFUSING, ids=[m for _, m in REFUSING])
def test_a_method_refusing_nan_gradients_gets_the_step_skipped(module, method):
    pytest.importorskip(module)
    tr, batch, poisoned = _refused_trainer("skip", method)
    before = _params(tr)
    with pytest.warns(RuntimeWarning, match=r"skipped step 0 .*non-finite gradient at step 0 \(the losses are finite\)") as record:
        assert tr.step(batch).skipped
    assert [w.filename for w in record] == [__file__]  # points at the caller of step
    assert tr.counters["skipped_steps"] == 1
    assert all(torch.equal(p, b) for p, b in zip(tr.model.parameters(), before))
    poisoned[0] = False
    assert not tr.step(batch).skipped
    assert tr.counters["skipped_steps"] == 1
    after = _params(tr)
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert any(not torch.equal(p, b) for p, b in zip(after, before))


@pytest.mark.parametrize(("module", "method"), REFUSING, ids=[m for _, m in REFUSING])
def test_a_method_refusing_nan_gradients_raises_the_nonfinite_error(module, method):
    pytest.importorskip(module)
    tr, batch, _ = _refused_trainer("raise", method)
    before = _params(tr)
    with pytest.raises(mtoframe.NonFiniteLossError, match=r"non-finite gradient at step 0 \(the losses are finite\): "
                       r"the gradient matrix's row\(s\) of task\(s\) \['a'\], on which"):
        tr.step(batch)
    assert all(torch.equal(p, b) for p, b in zip(tr.model.parameters(), before))


def test_the_nonfinite_error_names_the_refusing_method_and_chains_its_error():
    pytest.importorskip("mtoframe_gradmethods")
    tr, batch, _ = _refused_trainer("raise", "mgda")
    with pytest.raises(mtoframe.NonFiniteLossError, match=r"\['a'\], on which the stack's gradient method\(s\) "
                       r"\['mgda'\] raised SolverError: min_norm_point") as info:
        tr.step(batch)
    assert isinstance(info.value.__cause__, mtoframe.SolverError)


class _RefusesEverything(mtoframe.Method):
    name = "refuseseverything"
    roles = mtoframe.Role.AGGREGATOR

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.gram()
        raise ValueError("no")


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_a_method_failing_on_finite_gradients_is_still_a_method_error(nonfinite):
    tr = make_trainer([_RefusesEverything()], nonfinite=nonfinite)
    with pytest.raises(mtoframe.MethodError, match=r"'refuseseverything' failed in hook on_shared_grads: ValueError: no"):
        tr.step(_batch())
    assert tr.counters["skipped_steps"] == 0


class _FailsUnseen(mtoframe.Method):
    name = "failsunseen"
    roles = mtoframe.Role.AGGREGATOR

    @hookimpl
    def on_shared_grads(self, ctx):
        raise ValueError("broken before reading ctx.grads")


def test_a_method_failing_before_reading_nan_gradients_is_still_a_method_error():
    # it did not refuse the matrix: its own bug must not hide behind a skipped step
    tr, batch, _ = _refused_trainer("skip", _FailsUnseen())
    with pytest.raises(mtoframe.MethodError, match=r"'failsunseen' failed in hook on_shared_grads: ValueError: broken"):
        tr.step(batch)
    assert tr.counters["skipped_steps"] == 0


def test_the_refusal_check_reads_nothing_on_a_normal_step(monkeypatch):
    # grads_finite() is a host read when bool()'d: only a failed on_shared_grads may pay for it
    pytest.importorskip("mtoframe_gradmethods")
    from mtoframe.context import StepContext
    calls = []
    real = StepContext.grads_finite
    monkeypatch.setattr(StepContext, "grads_finite", lambda self: calls.append(1) or real(self))
    tr, batch, poisoned = _refused_trainer("skip", "mgda")
    poisoned[0] = False
    assert not tr.step(batch).skipped
    assert calls == []


def test_fit_never_overwrites_the_last_good_checkpoint_with_a_nan_model(tmp_path):
    tr = _nan_grad_trainer("skip")
    path = tmp_path / "last.pt"
    tr.save_checkpoint(path)
    good = path.read_bytes()
    with torch.no_grad():
        tr.model.heads["b"].bias.fill_(float("nan"))
    with pytest.raises(mtoframe.CheckpointError, match=r"not writing checkpoint .*last.pt: the model has non-finite "
                       r"values in \['heads.b.bias'\]; the previous checkpoint is kept"):
        tr.save_checkpoint(path)
    assert path.read_bytes() == good


# -- output paths --------------------------------------------------------------------------------

MANYTASK = """
epochs = 1
batch_size = 8
seed = 1
[data]
name = "manytask"
num_tasks = 2
n_train = 16
n_val = 8
d_in = 4
[model]
d_rep = 3
[optimizer]
name = "sgd"
lr = 0.05
"""


def _cfg_file(tmp_path, extra="", name="run.toml"):
    path = tmp_path / name
    path.write_text(extra + MANYTASK)
    return path


@pytest.mark.parametrize("case", ["checkpoint is the config", "checkpoint is <log_dir>/history.json",
                                  "--history is the checkpoint"])
def test_outputs_never_clobber_inputs_or_each_other(tmp_path, capsys, case):
    ckpt = tmp_path / ("run.toml" if case == "checkpoint is the config" else "c.pt")
    if case == "checkpoint is <log_dir>/history.json":
        ckpt = tmp_path / "logs" / "history.json"
    cfg = _cfg_file(tmp_path, f'checkpoint = "{ckpt.as_posix()}"\nlog_dir = "{(tmp_path / "logs").as_posix()}"\n')
    text = cfg.read_text()
    argv = ["train", str(cfg)] + (["--history", str(ckpt)] if case == "--history is the checkpoint" else [])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert re.search(r"is the same file as the (config file|checkpoint|history file)", err), err
    assert "training" not in out  # refused before any data was built
    assert cfg.read_text() == text


def test_checkpoint_through_a_symlink_writes_the_target(tmp_path):
    target = tmp_path / "real.pt"
    target.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    make_trainer([]).save_checkpoint(link)
    assert link.is_symlink() and torch.load(target, weights_only=True)["format"] == 1


def test_checkpoint_over_a_non_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(mtoframe.CheckpointError, match=r"pipe.pt is not a regular file \(a device node"):
        make_trainer([]).save_checkpoint(fifo)
    assert fifo.is_fifo()


def test_output_under_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    cfg = _cfg_file(tmp_path, f'checkpoint = "{(tmp_path / "afile" / "c.pt").as_posix()}"\n')
    assert main(["train", str(cfg)]) == 2
    assert re.search(r"checkpoint .*afile/c.pt cannot be created: .*afile is a file, not a directory",
                     capsys.readouterr().err)


def test_full_disk_during_save_is_a_checkpoint_error_keeping_the_previous(tmp_path, monkeypatch):
    tr = make_trainer([])
    tr.save_checkpoint(tmp_path / "c.pt")
    good = (tmp_path / "c.pt").read_bytes()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(mtoframe.CheckpointError, match=r"cannot write checkpoint .*c.pt \(the previous one is kept\): "
                       r"No space left on device"):
        tr.save_checkpoint(tmp_path / "c.pt")
    monkeypatch.undo()
    assert (tmp_path / "c.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_orphaned_temporary_files_are_removed_by_the_next_save(tmp_path):
    for stale in (".c.pt.k3j2_a.tmp", ".c.pt.zz9.tmp"):
        (tmp_path / stale).write_bytes(b"\0" * 1024)
    (tmp_path / ".other.pt.x.tmp").write_bytes(b"kept: another file's")
    make_trainer([]).save_checkpoint(tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.x.tmp", "c.pt"]


# -- plugins -------------------------------------------------------------------------------------

def _method_source(names, hook_body="ctx.weights = ctx.weights * 1"):
    classes = "".join(textwrap.dedent(f'''
        class M_{n}(Method):
            name = "{n}"
            summary = "fixture {n}"
            paper = "none"
            roles = Role.LOSS

            @mtoframe.hookimpl
            def on_task_losses(self, ctx):
                {hook_body}
        ''') for n in names)
    adds = "".join(f"    registry.add(M_{n})\n" for n in names)
    return ("import sys\nimport mtoframe\nfrom mtoframe import Method, Role\n" + classes
            + "\n\n@mtoframe.hookimpl\ndef mtoframe_register(registry):\n" + adds)


def _plugin_dist(root, dist, ep_name, source):
    module = f"{ep_name}_fixturemod"
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mtoframe]\n{ep_name} = {module}\n")
    return module


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    for var in ("MTOFRAME_PLUGINS", "MTOFRAME_DISABLE_PLUGINS", "MTOFRAME_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for mod in set(sys.modules) - before:
        if mod.endswith("_fixturemod"):
            sys.modules.pop(mod)
    monkeypatch.undo()
    get_registry(reload=True)


def test_name_claimed_by_two_distributions_goes_to_neither(plugin_dir, monkeypatch, capsys):
    _plugin_dist(plugin_dir, "fixture-impostor", "aaimpostor", _method_source(["sharedname", "impostoronly"]))
    _plugin_dist(plugin_dir, "fixture-real", "real", _method_source(["sharedname", "realonly"]))
    reg = get_registry(reload=True)
    assert {"impostoronly", "realonly"} <= set(reg.names())  # every other method of both kept
    with pytest.raises(mtoframe.PluginError, match=r"'sharedname' is registered by fixture-impostor .* and "
                       r"fixture-real .*'fixture-impostor:sharedname' or 'fixture-real:sharedname'.*MTOFRAME_PLUGINS"):
        make_trainer(["sharedname"])
    assert reg.get("fixture-real:sharedname").distribution == "fixture-real"
    assert make_trainer(["fixture-real:sharedname"]).stack[0].name == "sharedname"
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "CONFLICT sharedname: method 'sharedname' is registered by fixture-impostor" in out
    assert not [line for line in out.splitlines() if line.startswith("FAILED") and "fixture-" in line]
    monkeypatch.setenv("MTOFRAME_DISABLE_PLUGINS", "fixture-impostor")
    assert get_registry(reload=True).get("sharedname").distribution == "fixture-real"


def test_impostor_cannot_take_pcgrad_from_gradmethods(plugin_dir):
    pytest.importorskip("mtoframe_gradmethods")
    _plugin_dist(plugin_dir, "evil-pcgrad", "aaa", _method_source(["pcgrad"]))
    reg = get_registry(reload=True)
    with pytest.raises(mtoframe.PluginError, match=r"evil-pcgrad.*mtoframe.gradmethods|mtoframe.gradmethods.*evil-pcgrad"):
        mtoframe.create("pcgrad")
    assert not any("gradmethods" in f.distribution for f in reg.failures)
    own = [i.name for i in reg.infos() if "gradmethods" in i.distribution]
    assert len(own) >= 5  # the victim's other methods are still there
    assert reg.get("mtoframe-gradmethods:pcgrad").distribution.replace("_", "-") == "mtoframe-gradmethods"


def test_sys_exit_at_plugin_import_is_a_reported_failure(plugin_dir, capsys):
    _plugin_dist(plugin_dir, "fixture-exit", "exiter", "import sys\nsys.exit(3)\n")
    _plugin_dist(plugin_dir, "fixture-fine", "fine", _method_source(["finefixture"]))
    reg = get_registry(reload=True)
    assert "finefixture" in reg.names()
    assert [f.error for f in reg.failures if f.plugin == "exiter"] == ["SystemExit: 3"]
    assert main(["plugins"]) == 0
    assert "FAILED exiter (fixture-exit 0.1): SystemExit: 3" in capsys.readouterr().out


def test_sys_exit_in_a_hook_is_a_method_error(plugin_dir):
    _plugin_dist(plugin_dir, "fixture-hookexit", "hookexit", _method_source(["exitinhook"], "sys.exit(4)"))
    get_registry(reload=True)
    with pytest.raises(mtoframe.MethodError, match=r"method 'exitinhook' failed in hook on_task_losses: SystemExit: 4"):
        make_trainer(["exitinhook"]).step(_batch())


def test_typo_in_the_allow_list_is_reported(plugin_dir, monkeypatch):
    monkeypatch.setenv("MTOFRAME_PLUGINS", "mtoframe-gradmethod")
    reg = get_registry(reload=True)
    assert any("MTOFRAME_PLUGINS names 'mtoframe-gradmethod', which is no installed plugin" in f.error
               for f in reg.failures)
    with pytest.raises(mtoframe.UnknownMethodError, match=r"restricted by MTOFRAME_PLUGINS='mtoframe-gradmethod'"):
        mtoframe.create("pcgrad")


class _NumpyState(mtoframe.Method):
    name = "numpystate"
    roles = mtoframe.Role.LOSS

    def __init__(self, value, **kw):
        super().__init__(**kw)
        self.value = value

    @hookimpl
    def on_task_losses(self, ctx):
        pass

    def state_dict(self):
        return {"history": {"ema": self.value}}


@pytest.mark.parametrize(("value", "kind"), [(np.zeros(3), "numpy.ndarray"), ({1, 2}, "builtins.set")])
def test_state_a_weights_only_load_refuses_is_caught_at_save_time(tmp_path, value, kind):
    tr = make_trainer([_NumpyState(value)])
    with pytest.raises(mtoframe.CheckpointError, match=rf"the state of method 'numpystate' holds a {kind} at key "
                       r"'history.ema', which a weights-only torch.load refuses"):
        tr.save_checkpoint(tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


# -- resume and checkpoints that tell the truth --------------------------------------------------

def test_resume_applies_a_changed_learning_rate_and_says_so(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    cfg = _cfg_file(tmp_path, f'checkpoint = "{ckpt.as_posix()}"\n')
    assert main(["train", str(cfg)]) == 0
    assert main(["train", str(cfg), "--resume", "--set", "epochs=2", "--set", "optimizer.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "resume: optimizer.lr changed from 0.05 to 0.5 (applied)" in out
    groups = torch.load(ckpt, weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.5]


@pytest.mark.parametrize(("overrides", "named"), [
    (["--set", "seed=2"], r"seed: 1 in the checkpoint, 2 now"),
    (["--set", "methods=['ew']", "--set", "optimizer.name='adam'"],
     r"""methods: '\(\)' in the checkpoint, "\('ew',\)" now; optimizer.name: 'sgd' in the checkpoint, 'adam' now"""),
])
def test_resume_refuses_changes_the_saved_state_was_built_from(tmp_path, capsys, overrides, named):
    ckpt = tmp_path / "c.pt"
    cfg = _cfg_file(tmp_path, f'checkpoint = "{ckpt.as_posix()}"\n')
    assert main(["train", str(cfg)]) == 0
    saved = ckpt.read_bytes()
    assert main(["train", str(cfg), "--resume", "--set", "epochs=2", *overrides]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and re.search(named, err), err
    assert ckpt.read_bytes() == saved


def _bad_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    make_trainer([]).save_checkpoint(good)
    raw = good.read_bytes()

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    garbage = bytes(torch.randint(0, 256, (256,), generator=torch.Generator().manual_seed(0)).tolist())
    files = {"empty": b"", "truncated": raw[: len(raw) // 2], "garbage": garbage}
    for name, data in files.items():
        (tmp_path / f"{name}.pt").write_bytes(data)
    torch.save({"a": 1}, tmp_path / "foreign.pt")
    torch.save({"format": 1, "x": Payload()}, tmp_path / "malicious.pt")
    other = make_trainer([], model=make_vector_model(d_rep=3))
    other.save_checkpoint(tmp_path / "othermodel.pt")
    return ["empty", "truncated", "garbage", "foreign", "malicious", "othermodel"]


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "foreign", "malicious", "othermodel"])
def test_every_bad_checkpoint_is_one_checkpoint_error_naming_the_file(tmp_path, kind):
    assert kind in _bad_checkpoints(tmp_path)
    path = tmp_path / f"{kind}.pt"
    with pytest.raises(mtoframe.CheckpointError) as info:
        make_trainer([]).load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "weights_only" not in msg
    expected = {"empty": "is empty", "truncated": "truncated or not a torch checkpoint",
                "garbage": "truncated or not a torch checkpoint", "foreign": "not an mtoframe trainer checkpoint",
                "malicious": "holds Python objects other than tensors", "othermodel": "does not fit this trainer"}[kind]
    assert expected in msg, msg


# -- silently accepted mistakes ------------------------------------------------------------------

class _DetachZ(mtoframe.Method):
    name = "detachz"
    roles = mtoframe.Role.LOSS

    @hookimpl
    def on_representation(self, ctx):
        ctx.z = ctx.z.detach()


class _TransformSettingUpdate(mtoframe.Method):
    name = "sneakyupdate"
    roles = mtoframe.Role.TRANSFORM

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.set_update(ctx.grads.sum(0))


class _NoMarker(mtoframe.Method):
    name = "nomarker"
    roles = mtoframe.Role.LOSS

    def on_task_losses(self, ctx):  # forgot @hookimpl
        ctx.weights = ctx.weights * 0


def _loss_then(methods):
    pytest.importorskip("mtoframe_famo")
    pytest.importorskip("mtoframe_nashmtl")
    pytest.importorskip("mtoframe_cagrad")
    return make_trainer(methods)


def _step_with(batch_change):
    model = make_vector_model()
    x, ys = make_batch(model)
    return make_trainer([], model=model).step(batch_change(x, ys))


def _fit(train, epochs):
    return make_trainer([]).fit(train, epochs=epochs)


def _config_bytes(directory, data):
    path = directory / "latin1.toml"
    path.write_bytes(data)
    from mtoframe.config import load_config
    return load_config(path)


def _foreign_optimizer():
    model = make_vector_model()
    other = make_vector_model()
    return mtoframe.Trainer(model, make_tasks(), optimizer=torch.optim.SGD(other.parameters(), lr=0.1))


MISTAKES = [
    ("loss method after a gradient method", lambda: _loss_then(["cagrad", "famo"]), mtoframe.StackError,
     r"loss method 'famo' is listed after gradient method\(s\) \['cagrad'\] .* write \['famo', 'cagrad'\]"),
    ("loss method after nashmtl names the order as written", lambda: _loss_then(["nashmtl", "famo"]),
     mtoframe.StackError, r"'famo' is listed after gradient method\(s\) \['nashmtl'\]"),
    ("optimiser over parameters that are not the model's", _foreign_optimizer, mtoframe.OptionError,
     r"optimiser holds 10 parameter\(s\) that are not the model's"),
    ("hook without @hookimpl", lambda: make_trainer([_NoMarker()]), mtoframe.StackError,
     r"'nomarker' defines on_task_losses without @mtoframe.hookimpl"),
    ("transform calling set_update", lambda: make_trainer([_TransformSettingUpdate()]).step(_batch()),
     mtoframe.MethodError, r"'sneakyupdate' called ctx.set_update in hook on_shared_grads but is not an aggregator"),
    ("hook detaching ctx.z", lambda: make_trainer([_DetachZ()]).step(_batch()), mtoframe.MethodError,
     r"'detachz' detached ctx.z in hook on_representation"),
    ("target that only broadcasts", lambda: _step_with(lambda x, ys: (x, {**ys, "a": ys["a"].view(-1)})),
     mtoframe.BatchError, r"target of task 'a' has shape \(8,\) and its prediction \(8, 1\): they only broadcast"),
    ("empty batch", lambda: _step_with(lambda x, ys: (x[:0], {t: y[:0] for t, y in ys.items()})),
     mtoframe.BatchError, r"inputs are empty \(shape \(0, 8\)\)"),
    ("float32 inputs to a float64 model", lambda: _step_with(lambda x, ys: (x.float(), ys)), mtoframe.BatchError,
     r"inputs are torch.float32 but the model's parameters are torch.float64"),
    ("fit(epochs=True)", lambda: _fit([_batch()], True), mtoframe.OptionError,
     r"epochs must be a positive integer, got True"),
    ("fit([])", lambda: _fit([], 1), mtoframe.OptionError, r"training data yielded no batches in epoch 0"),
]


@pytest.mark.parametrize(("what", "action", "error", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_silently_accepted_mistakes_now_fail_clearly(what, action, error, message):
    with pytest.raises(error) as info:
        action()
    assert re.search(message, str(info.value)), f"{what}: message was {info.value}"


def test_non_utf8_config_is_an_option_error(tmp_path):
    with pytest.raises(mtoframe.OptionError, match=r"latin1.toml is not UTF-8 text \(byte 0xe9 at offset 5\)"):
        _config_bytes(tmp_path, b"# caf\xe9\nseed = 1\n")


def test_toy_refuses_a_negative_step_budget(capsys):
    with pytest.raises(SystemExit) as info:
        main(["toy", "--steps", "-5"])
    assert info.value.code == 2
    assert "expected a positive number of steps, got -5" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_device_on_a_cpu_only_torch_is_refused_before_data(tmp_path, capsys, monkeypatch):
    import mtoframe.commands.train as train_cmd

    def no_data(cfg):
        raise AssertionError("data was built")

    monkeypatch.setattr(train_cmd, "build_run", no_data)
    cfg = _cfg_file(tmp_path, 'device = "cuda"\n')
    assert main(["train", str(cfg)]) == 2
    assert "has no usable CUDA device" in capsys.readouterr().err


def test_a_task_with_only_ignored_labels_dropping_the_step_is_warned_about():
    model = mtoframe.MultiTaskModel(encoder=nn.Linear(4, 8), heads={"seg": nn.Linear(8, 3), "b": nn.Linear(8, 1)})
    tasks = [mtoframe.Task("seg", loss=lambda p, t: nn.functional.cross_entropy(p, t, ignore_index=-1)),
             mtoframe.Task("b", loss=nn.functional.mse_loss)]
    tr = mtoframe.Trainer(model, tasks, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), nonfinite="skip")
    batch = (torch.randn(6, 4), {"seg": torch.full((6,), -1), "b": torch.randn(6, 1)})
    with pytest.warns(RuntimeWarning, match=r"skipped step 0 .*task\(s\) \['seg'\].*every task's update with it.*"
                      r"all labels ignore_index\) should get no target"):
        tr.step(batch)
    assert tr.step((batch[0], {"seg": None, "b": batch[1]["b"]})).skipped is False


def test_checkpoint_of_another_optimiser_is_refused_before_loading(tmp_path):
    make_trainer([], optimizer="sgd").save_checkpoint(tmp_path / "c.pt")
    tr = make_trainer([], optimizer="adam")
    before = _params(tr)
    with pytest.raises(mtoframe.CheckpointError, match=r"c.pt does not fit this trainer: checkpoint was written with a "
                       r"SGD optimiser, this trainer has Adam"):
        tr.load_checkpoint(tmp_path / "c.pt")
    assert all(torch.equal(p, b) for p, b in zip(tr.model.parameters(), before))


def test_a_huge_but_finite_gradient_is_not_called_non_finite():
    # 2-norms overflow float32 from ~1e19; the step must go ahead (the exact check confirms)
    model = mtoframe.MultiTaskModel(encoder=nn.Linear(2, 2), heads={"a": nn.Linear(2, 1)})
    tasks = [mtoframe.Task("a", loss=lambda p, t: (p * 1e25).sum())]
    tr = mtoframe.Trainer(model, tasks, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), nonfinite="raise")
    assert not tr.step((torch.ones(3, 2), {"a": torch.ones(3, 1)})).skipped
