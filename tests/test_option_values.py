"""Option validators reject NaN and ±inf unless a method explicitly allows infinity, for the
validators of :mod:`mtoframe.options` and for every option of every installed method."""

from __future__ import annotations

import math

import attrs
import pytest

import mtoframe
from mtoframe.options import in_range

BAD = (math.nan, math.inf, -math.inf)


@attrs.frozen(kw_only=True)
class _Opts:
    open_ended: float = attrs.field(default=1.0, validator=in_range(0.0))
    both_ends: float = attrs.field(default=0.0, validator=in_range())
    unit: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    may_be_inf: float = attrs.field(default=1.0, validator=in_range(0.0, allow_inf=True))


@pytest.mark.parametrize("field", ["open_ended", "both_ends", "unit", "may_be_inf"])
@pytest.mark.parametrize("value", BAD)
def test_in_range_rejects_nan_and_infinity_unless_allowed(field, value):
    if field == "may_be_inf" and not math.isnan(value) and value > 0:
        assert _Opts(may_be_inf=value).may_be_inf == math.inf
        return
    with pytest.raises(mtoframe.OptionError, match=rf"option '{field}' of .* must be a number in .*, got {value!r}"):
        _Opts(**{field: value})


def test_an_infinite_bound_is_shown_open_unless_infinity_is_allowed():
    with pytest.raises(mtoframe.OptionError, match=r"must be a number in \[0.0, inf\), got inf"):
        _Opts(open_ended=math.inf)
    with pytest.raises(mtoframe.OptionError, match=r"must be a number in \(-inf, inf\), got nan"):
        _Opts(both_ends=math.nan)
    with pytest.raises(mtoframe.OptionError, match=r"must be a number in \[0.0, inf\], got -1.0"):
        _Opts(may_be_inf=-1.0)
    assert _Opts(open_ended=1e300, both_ends=-1e300).open_ended == 1e300


def _installed_options():
    for name in mtoframe.available():
        cls = mtoframe.get_registry().get(name).cls
        for field in attrs.fields(cls.Options):
            yield pytest.param(name, field.name, id=f"{name}.{field.name}")


@pytest.mark.parametrize(("name", "option"), list(_installed_options()))
@pytest.mark.parametrize("value", BAD, ids=["nan", "inf", "-inf"])
def test_every_installed_option_rejects_non_finite_numbers(name, option, value):
    # no official plugin declares an option where infinity means something (allow_inf=True)
    with pytest.raises(mtoframe.OptionError, match=option):
        mtoframe.create(name, **{option: value})


@pytest.mark.parametrize(("name", "option"), [
    ("cagrad", "c"), ("nashmtl", "max_norm"), ("famo", "gamma"), ("famo", "w_lr"), ("famo", "min_losses"),
    ("fairgrad", "alpha"), ("dbmtl", "beta"), ("excessmtl", "step_size"), ("gradnorm", "alpha"),
    ("dwa", "temperature"), ("stch", "mu"), ("si", "eps"), ("uw", "lr"), ("graddrop", "leak"),
    ("gradvac", "beta"), ("mgda", "tol"), ("repmtl", "tau"), ("torchjd.upgrad", "reg_eps"),
])
def test_named_open_ended_options_reject_infinity(name, option):
    if name not in mtoframe.available():
        pytest.skip(f"{name} is not installed here (the 'all' tox env has every plugin)")
    # the message names the option and its owner (methods sharing an options class name one of them)
    with pytest.raises(mtoframe.OptionError, match=rf"option '{option}' of \S+ must be a"):
        mtoframe.create(name, **{option: math.inf})
