"""The error catalogue: each bad input fails with a message naming the problem and what is allowed.

Entries that need a plugin or the config loader skip when those are not installed (they run in the
tox ``all`` env)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from helpers import Negate, ScaledSum
from torch import nn

import mtoframe
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
