"""Configs that reach user code: ``[data]`` / ``[model]`` factories and ``[[tasks]]`` tables, the
example package under ``examples/weather``, and the errors for factories that do not fit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mtoframe.cli import main
from mtoframe.commands.train import train
from mtoframe.config import load_config, parse_config
from mtoframe.errors import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "weather.toml"

USER_MODULE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset, Dataset
from mtoframe import MultiTaskModel


class Pairs(Dataset):
    def __init__(self, n, keys=("a", "b")):
        g = torch.Generator().manual_seed(n)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)
        self.keys = keys

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {k: self.y[i, j:j + 1] for j, k in enumerate(self.keys)}


def data(n=16):
    return Pairs(n), Pairs(8)


def data_one():
    return Pairs(16)


def data_bad_items():
    return TensorDataset(torch.randn(4, 2)), Pairs(4)


def data_wrong_task():
    return Pairs(8, keys=("a", "c")), Pairs(8)


def model(hidden=3):
    return MultiTaskModel(encoder=nn.Linear(4, hidden), heads={"a": nn.Linear(hidden, 1), "b": nn.Linear(hidden, 1)})


def model_one_head():
    return MultiTaskModel(encoder=nn.Linear(4, 3), heads={"a": nn.Linear(3, 1)})


def model_plain():
    return nn.Linear(4, 2)


def halved_mse(pred, target):
    return 0.5 * ((pred - target) ** 2).mean()


class NotAMetric:
    pass


NOT_CALLABLE = 3
'''


def _config(tmp_path: Path, **edits: str) -> Path:
    (tmp_path / "usermod_t.py").write_text(USER_MODULE)
    body = {
        "data": 'factory = "usermod_t:data"\nargs = { n = 16 }',
        "model": 'factory = "usermod_t:model"\nargs = { hidden = 3 }',
        "task_a": 'name = "a"\nloss = "mse"\nmetrics = ["mae"]',
        "task_b": 'name = "b"\nloss = "usermod_t:halved_mse"\nmetrics = ["mse"]',
    }
    body.update(edits)
    text = textwrap.dedent(f"""\
        pythonpath = ["."]
        epochs = 2
        batch_size = 4
        [data]
        {body["data"]}
        [model]
        {body["model"]}
        [[tasks]]
        {body["task_a"]}
        [[tasks]]
        {body["task_b"]}
        """)
    path = tmp_path / "user.toml"
    path.write_text(text)
    return path


def test_user_factories_train_and_pythonpath_is_relative_to_the_config(tmp_path, monkeypatch):
    cfg = load_config(_config(tmp_path))
    assert cfg.pythonpath == (str(tmp_path.resolve()),)
    monkeypatch.chdir("/")  # the module is found through pythonpath, not the working directory
    history = train(cfg)
    assert len(history) == 2 and set(history[-1]["val"]) == {"a", "b"}
    assert set(history[-1]["val"]["a"]) == {"mae"} and set(history[-1]["val"]["b"]) == {"mse"}


def test_the_example_package_trains_from_its_config(tmp_path, capsys):
    pytest.importorskip("mtoframe_famo")
    assert main(["train", str(EXAMPLE), "--set", "epochs=1", "--set", f'log_dir="{tmp_path / "run"}"',
                 "--set", "data.args={ n_train = 64, n_val = 32, n_test = 32 }"]) == 0
    out = capsys.readouterr().out
    assert "training famo on weather_mtl.data:make_datasets (64 train / 32 val)" in out
    assert "rain: acc=" in out and "brier=" in out and "wind: mae=" in out


@pytest.mark.parametrize(("edits", "match"), [
    ({"data": 'factory = "no_such_pkg_x.data:make"'},
     r"\[data\] factory = 'no_such_pkg_x.data:make': cannot import module 'no_such_pkg_x.data' "
     r"\(ModuleNotFoundError: No module named 'no_such_pkg_x'\)"),
    ({"data": 'factory = "usermod_t:make_data"'},
     r"\[data\] factory = 'usermod_t:make_data': 'usermod_t' has no attribute 'make_data'; callables there: .*data"),
    ({"data": 'factory = "usermod_t:data_one"'},
     r"\[data\] factory = 'usermod_t:data_one' returned Pairs .*must return a tuple \(train, val\) or \(train, val, test\)"),
    ({"data": 'factory = "usermod_t:data_bad_items"'},
     r"item 0 of the train split is tuple .*items must be \(input, \{task_name: target\}\)"),
    ({"data": 'factory = "usermod_t:data_wrong_task"'}, r"targets for \['c'\], which are not \[\[tasks\]\] names"),
    ({"data": 'factory = "usermod_t:data"\nargs = { size = 3 }'},
     r"\[data\] factory = 'usermod_t:data' cannot be called with args \{'size': 3\}: .*its parameters: n"),
    ({"data": 'factory = "usermod_t:NOT_CALLABLE"'}, r"names a int, not a function or class"),
    ({"model": 'factory = "usermod_t:model_plain"'},
     r"\[model\] factory = 'usermod_t:model_plain' returned Linear .*must return a mtoframe.MultiTaskModel"),
    ({"model": 'factory = "usermod_t:model_one_head"'},
     r"\[model\] factory = 'usermod_t:model_one_head': task names \['a', 'b'\] do not match the model's heads \['a'\]"),
    ({"task_b": 'name = "b"\nloss = "torch.nn:MSELoss"'}, r"tasks\[1\] \('b'\).loss = 'torch.nn:MSELoss' names a class; write"),
    ({"task_b": 'name = "b"\nloss = "usermod_t:NOT_CALLABLE"'}, r"not callable as loss\(prediction, target\)"),
    ({"task_b": 'name = "b"\nloss = "mse"\nmetrics = ["usermod_t:NotAMetric"]'},
     r"tasks\[1\] \('b'\).metrics\[0\] built NotAMetric .*a metric needs directions"),
])
def test_factories_that_do_not_fit_are_named(tmp_path, edits, match):
    cfg = load_config(_config(tmp_path, **edits))
    with pytest.raises(OptionError, match=match):
        train(cfg)


@pytest.mark.parametrize(("text", "match"), [
    ('[data]\nfactory = "no colon"\n', r"option 'factory' of \[data\] must be a 'package.module:function' path"),
    ('[data]\nfactory = "m:f"\n[model]\nfactory = "m:g"\n', r"needs \[\[tasks\]\] tables"),
    ('[data]\nfactory = "m:f"\n[[tasks]]\nname = "a"\nloss = "mse"\n', r"needs a \[model\] factory too"),
    ('[model]\nfactory = "m:g"\n', r"a \[model\] factory needs a \[data\] factory"),
    ('[[tasks]]\nname = "a"\nloss = "mse"\n', r"\[\[tasks\]\] tables \(with losses\) need a \[data\] factory"),
    ('[data]\nfactory = "m:f"\n[model]\nfactory = "m:g"\n[[tasks]]\nname = "a"\nloss = "hinge"\n',
     r"tasks\[0\] \('a'\).loss = 'hinge' is neither a built-in \(mse, l1, smooth_l1, cross_entropy, bce_logits\)"),
    ('[data]\nfactory = "m:f"\n[model]\nfactory = "m:g"\n[[tasks]]\nname = "a"\nloss = { factory = "m:l", kw = 1 }\n',
     r"needs 'factory' and optionally 'args' \(allowed keys: factory, args\)"),
    ('[data]\nfactory = "m:f"\n[model]\nfactory = "m:g"\n[[tasks]]\nname = "a"\nlos = "mse"\n',
     r"tasks\[0\] needs a string 'name' and a 'loss'"),
    ('[data]\nfactory = "m:f"\nargs = 3\n', r"option 'args' of \[data\] must be a table of keyword arguments"),
])
def test_config_errors_of_user_code_keys(text, match):
    with pytest.raises(OptionError, match=match):
        parse_config(text)


def test_configs_without_user_code_flatten_as_before():
    from mtoframe.config import flat

    keys = set(flat(parse_config("")))
    assert not keys & {"data.factory", "data.args", "model.factory", "model.args", "pythonpath"}
