"""User code named in a run config: ``"package.module:attribute"`` paths, called with keyword
arguments (the config's ``args`` tables), and the checks on what they return.

The convention is LightningCLI's ``class_path`` / ``init_args`` and Hydra's ``_target_``, spelt
``factory`` / ``args``: the path is imported when the run is built (not when the config is read),
from ``sys.path`` plus the config's ``pythonpath`` folders. Every failure names the factory and
the config key that holds it; an exception raised *inside* the user's function is the user's
and propagates unchanged, with its own traceback.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import OptionError

#: ``package.module:attribute`` (the attribute may be dotted: ``module:Class.method``)
PATH_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def check_path(value: Any, where: str) -> str:
    """``value`` if it is a well-formed ``module:attribute`` path, else an error naming ``where``."""
    if not isinstance(value, str) or not PATH_RE.match(value):
        raise OptionError(f"{where} must be a 'package.module:function' path (e.g. \"mypkg.data:make\"), "
                          f"got {value!r}")
    return value


def add_pythonpath(folders: Sequence[str]) -> None:
    """Put the config's ``pythonpath`` folders first on ``sys.path`` (once each), as pytest's
    ``pythonpath`` option does, so an example package imports without being installed."""
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def resolve(path: str, where: str) -> Any:
    """The object ``path`` names; import errors and missing attributes name ``where`` and ``path``."""
    check_path(path, where)
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OptionError(f"{where} = {path!r}: cannot import module {module_name!r} "
                          f"({type(exc).__name__}: {exc}); is its folder installed or listed in "
                          "'pythonpath' (relative to the config file)?") from exc
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name, *attr.split(".")[:i]])
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            raise OptionError(f"{where} = {path!r}: {owner!r} has no attribute {part!r}; "
                              f"callables there: {', '.join(public[:20]) or 'none'}")
        obj = getattr(obj, part)
    return obj


def call(path: str, args: Mapping[str, Any], where: str) -> Any:
    """Import ``path`` and call it with ``**args``; arguments the function does not take are
    refused before the call, naming the ones it does take."""
    fn = resolve(path, where)
    if not callable(fn):
        raise OptionError(f"{where} = {path!r} names a {type(fn).__name__}, not a function or class")
    bind_args(fn, args, f"{where} = {path!r}")
    return fn(**args)


def bind_args(fn: Callable[..., Any], args: Mapping[str, Any], what: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: let the call decide
        return
    try:
        sig.bind(**args)
    except TypeError as exc:
        params = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        raise OptionError(f"{what} cannot be called with args {dict(args)!r}: {exc}; "
                          f"its parameters: {', '.join(params) or 'none'}") from None


def describe(obj: Any) -> str:
    """A short description of a returned value for error messages."""
    text = repr(obj)
    return f"{type(obj).__name__} {text[:80] + '…' if len(text) > 80 else text}"
