"""Registry and functional API: create, available, aggregate, option errors."""

from __future__ import annotations

import pytest
import torch
from helpers import Halve, ScaledSum

import mtoframe
from mtoframe.errors import OptionError, UnknownMethodError


def test_ew_is_builtin():
    assert "ew" in mtoframe.available()
    assert repr(mtoframe.create("ew")) == "EW()"


def test_unknown_method_lists_installed():
    with pytest.raises(UnknownMethodError, match=r"unknown method 'nope'; installed methods: .*ew"):
        mtoframe.create("nope")


def test_unknown_option_lists_allowed():
    with pytest.raises(OptionError, match=r"unknown option\(s\) 'sclae' for method 'scaledsum'; allowed: space, scale"):
        ScaledSum(sclae=2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": -1.0}, r"option 'scale' of .* must be a number in \[0.0, inf\), got -1.0"),
        ({"scale": "x"}, r"option 'scale' .* got 'x'"),
        ({"space": "grads"}, r"option 'space' .* must be one of 'params', 'representation'; got 'grads'"),
    ],
)
def test_bad_option_values_name_option_and_range(kwargs, message):
    with pytest.raises(OptionError, match=message):
        ScaledSum(**kwargs)


def test_as_method_accepts_name_pair_and_object():
    assert mtoframe.as_method("ew").name == "ew"
    assert mtoframe.as_method(("ew", {})).name == "ew"
    m = Halve()
    assert mtoframe.as_method(m) is m
    with pytest.raises(OptionError, match="name, a \\(name, options-dict\\) pair or a Method"):
        mtoframe.as_method(3)


def test_aggregate_on_bare_matrix():
    g = torch.randn(3, 10, dtype=torch.float64)
    torch.testing.assert_close(mtoframe.aggregate(ScaledSum(scale=0.5), g), 0.5 * g.sum(0))
    with pytest.raises(mtoframe.MtoError, match="not a gradient method"):
        mtoframe.aggregate(Halve(), g)
    with pytest.raises(mtoframe.MtoError, match="T×P matrix"):
        mtoframe.aggregate(ScaledSum(), g[0])
