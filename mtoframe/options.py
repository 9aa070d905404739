"""Validators for method option classes (``attrs``), with messages that name the option and
the allowed values."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .errors import OptionError

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def owner_name(cls: type) -> str:
    """How option messages name an options class: its ``__method_name__`` (the method or config
    section it belongs to), else its qualified name."""
    name = getattr(cls, "__method_name__", None)
    return name if isinstance(name, str) else cls.__qualname__


def _owner(inst: Any) -> str:
    return owner_name(type(inst))


def in_range(
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_inf: bool = False,
) -> Validator:
    """Number in ``[lo, hi]`` (ends open when asked); rejects NaN and non-numbers.

    An infinite bound means "no bound", not "infinity allowed": ``±inf`` is rejected unless the
    method passes ``allow_inf=True`` because infinity has a documented meaning for that option
    (an infinite learning rate or weight turns every later update into NaN)."""

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        unbounded = not allow_inf  # an infinite end the value may not take is shown open: [0.0, inf)
        left = "(" if lo_open or (unbounded and lo == -math.inf) else "["
        right = ")" if hi_open or (unbounded and hi == math.inf) else "]"
        allowed = f"a number in {left}{lo}, {hi}{right}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"option {attr.name!r} of {_owner(inst)} must be {allowed}, got {value!r}")
        ok = not math.isnan(value) and (allow_inf or not math.isinf(value))
        ok = ok and (value > lo if lo_open else value >= lo)
        ok = ok and (value < hi if hi_open else value <= hi)
        if not ok:
            raise OptionError(f"option {attr.name!r} of {_owner(inst)} must be {allowed}, got {value!r}")

    return check


def integer(lo: int | None = None, hi: int | None = None) -> Validator:
    """Whole number in ``[lo, hi]``."""

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        allowed = f"an integer in [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"option {attr.name!r} of {_owner(inst)} must be {allowed}, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise OptionError(f"option {attr.name!r} of {_owner(inst)} must be {allowed}, got {value!r}")

    return check


def one_of(choices: Iterable[Any]) -> Validator:
    """Value among ``choices``."""
    allowed = tuple(choices)

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        # type check too: True == 1 and 1.0 == 1 would otherwise slip through
        if not any(value == c and type(value) is type(c) for c in allowed):
            raise OptionError(
                f"option {attr.name!r} of {_owner(inst)} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
            )

    return check


def boolean() -> Validator:
    """``True`` or ``False`` (not 0/1, which usually means a typo)."""

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, bool):
            raise OptionError(f"option {attr.name!r} of {_owner(inst)} must be True or False, got {value!r}")

    return check


def option_fields(cls: type) -> dict[str, Any]:
    """``{name: default}`` of an attrs options class (``attrs.NOTHING`` when required)."""
    return {a.name: a.default for a in attrs.fields(cls)}


@attrs.frozen(kw_only=True)
class NoOptions:
    """Options class of a method without options."""
