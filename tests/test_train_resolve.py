"""``mtoframe train`` resolves the stack (names, options, stacking rule) before it generates or
loads any data, and says where generated data is cached."""

from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe.cli import main
from mtoframe.commands import train as train_cmd
from mtoframe.config import parse_config

SCENES = """
epochs = 1
methods = [{methods}]
[data]
name = "scenes"
n_train = 512
n_val = 128
size = 32
"""


@pytest.fixture
def no_data(monkeypatch):
    """Any attempt to build the data fails the test: the stack must be rejected before."""
    def build_run(cfg):
        raise AssertionError("data was generated before the methods were resolved")

    monkeypatch.setattr(train_cmd, "build_run", build_run)


@pytest.mark.parametrize(("methods", "error", "says"), [
    ('"nosuchmethod"', mtoframe.UnknownMethodError, "nosuchmethod"),
    ('"ew", "ew"', mtoframe.StackError, "appears 2 times"),
    ('{ name = "ew", options = { bogus = 1 } }', mtoframe.OptionError, "bogus"),
])
def test_a_bad_stack_fails_before_any_data(no_data, methods, error, says):
    cfg = parse_config(SCENES.format(methods=methods))
    with pytest.raises(error, match=says):
        train_cmd.train(cfg)


def test_help_states_the_cache_location(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "$MTOFRAME_CACHE" in out and "~/.cache/mtoframe" in out and "cache_dir" in out


def test_a_run_does_not_depend_on_the_global_rng_it_starts_from(tmp_path):
    """RLW draws its generator's seed from the global RNG when it is built: resolving the stack
    early must not build the run's methods before ``seed`` is applied."""
    pytest.importorskip("mtoframe_lossweighting")
    cfg = parse_config(SCENES.format(methods='"rlw"').replace("n_train = 512", "n_train = 64")
                       .replace("n_val = 128", "n_val = 16") + f'cache_dir = "{tmp_path.as_posix()}"\n')
    histories = []
    for outer in (1, 2):
        torch.manual_seed(outer)
        histories.append(train_cmd.train(cfg)[-1]["train_loss"])
    assert histories[0] == histories[1]
