"""Method registry and plugin discovery through the ``mtoframe`` entry-point group.

Discovery follows the pytest/tox pattern: a module-level plugin manager loads every entry point
of the group, each plugin implements :func:`mtoframe.hookspecs.mtoframe_register`, and a plugin
that fails to import (or to register) is recorded with its error while the others still load.

Environment variables:

``MTOFRAME_PLUGINS``
    comma-separated allow list of entry-point or distribution names; when set, only those load.
``MTOFRAME_DISABLE_PLUGINS``
    comma-separated block list (entry-point or distribution names).
``MTOFRAME_DISABLE_PLUGIN_AUTOLOAD``
    any non-empty value: load no entry points at all (built-in methods only).
"""

from __future__ import annotations

import os
import re
import threading
import traceback
from importlib import metadata
from typing import Any

import attrs
import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from . import hookspecs
from .errors import PluginError, UnknownMethodError
from .method import Method, Role

ENTRY_POINT_GROUP = "mtoframe"
_NAME = re.compile(r"^[a-z][a-z0-9]*(\.[a-z][a-z0-9]*)?$")
HOOK_NAMES = ("on_train_start", "on_representation", "on_task_losses", "on_shared_grads", "on_after_step", "on_epoch_end")


@attrs.frozen
class MethodInfo:
    """A registered method: its class and where it came from."""

    name: str
    cls: type[Method]
    distribution: str
    version: str
    plugin: str

    @property
    def hooks(self) -> list[str]:
        return [h for h in HOOK_NAMES if hasattr(getattr(self.cls, h, None), "mtoframe_impl")]

    @property
    def options(self) -> dict[str, Any]:
        out = {}
        for a in attrs.fields(self.cls.Options):
            out[a.name] = None if a.default is attrs.NOTHING else _plain(a.default)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "summary": self.cls.summary,
            "paper": self.cls.paper,
            "defaults_reproduce": self.cls.defaults_reproduce,
            "roles": [r.name.lower() for r in Role if r in self.cls.roles and r.name],
            "hooks": self.hooks,
            "heads_receive": self.cls.heads_receive,
            "options": self.options,
        }


def _plain(v: Any) -> Any:
    if isinstance(v, attrs.Factory):  # type: ignore[arg-type]
        return _plain(v.factory())  # type: ignore[call-arg]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return repr(v)


@attrs.frozen
class PluginFailure:
    """A plugin that did not load, and why."""

    plugin: str
    distribution: str
    version: str
    error: str
    detail: str = ""


class Registry:
    """Name -> :class:`MethodInfo`. Filled by ``mtoframe_register`` implementations."""

    def __init__(self) -> None:
        self._methods: dict[str, MethodInfo] = {}
        self.failures: list[PluginFailure] = []
        self._source = ("mtoframe", _version("mtoframe"), "builtin")

    def add(self, cls: type[Method]) -> None:
        """Register a :class:`Method` subclass under ``cls.name``."""
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise PluginError(f"registry.add expects a Method subclass, got {cls!r}")
        if not _NAME.match(cls.name):
            raise PluginError(
                f"method name {cls.name!r} of {cls.__qualname__} is not allowed: use lower case letters and digits "
                "with no separators (an optional 'prefix.' is allowed, e.g. 'torchjd.upgrad')"
            )
        if not attrs.has(cls.Options):
            raise PluginError(f"{cls.__qualname__}.Options must be an attrs class")
        dist, version, plugin = self._source
        if cls.name in self._methods:
            other = self._methods[cls.name]
            raise PluginError(
                f"method {cls.name!r} from {dist} clashes with the one from {other.distribution} ({other.plugin})"
            )
        cls.Options.__method_name__ = cls.name  # type: ignore[attr-defined]  # for option error messages
        self._methods[cls.name] = MethodInfo(cls.name, cls, dist, version, plugin)

    def get(self, name: str) -> MethodInfo:
        try:
            return self._methods[name]
        except KeyError:
            hint = ""
            if self.failures:
                hint = "; plugins that failed to load: " + ", ".join(f"{f.plugin} ({f.error})" for f in self.failures)
            raise UnknownMethodError(
                f"unknown method {name!r}; installed methods: {', '.join(sorted(self._methods)) or '(none)'}{hint}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._methods)

    def infos(self) -> list[MethodInfo]:
        return [self._methods[n] for n in self.names()]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def _hook_api_failure(module: Any) -> str | None:
    spec = getattr(module, "MTOFRAME_HOOK_API", None)
    if spec is None:
        return None
    try:
        ok = Version(hookspecs.HOOK_API_VERSION) in SpecifierSet(spec)
    except InvalidSpecifier:
        return f"MTOFRAME_HOOK_API {spec!r} is not a version specifier"
    if not ok:
        return f"incompatible hook API: plugin supports {spec}, mtoframe provides {hookspecs.HOOK_API_VERSION}"
    return None


def discover() -> Registry:
    """Build a registry: built-in methods, then every allowed entry point of the group."""
    from . import builtin

    registry = Registry()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="builtin")
    pm.hook.mtoframe_register(registry=registry)
    if os.environ.get("MTOFRAME_DISABLE_PLUGIN_AUTOLOAD"):
        return registry
    allow, block = _env_list("MTOFRAME_PLUGINS"), _env_list("MTOFRAME_DISABLE_PLUGINS")
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        keys = {ep.name, dist}
        if (allow is not None and not keys & allow) or (block is not None and keys & block):
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the others down
            registry.failures.append(
                PluginFailure(ep.name, dist, version, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            )
            continue
        reason = _hook_api_failure(module)
        if reason:
            registry.failures.append(PluginFailure(ep.name, dist, version, reason))
            continue
        registry._source = (dist, version, ep.name)
        before = dict(registry._methods)
        try:
            pm.register(module, name=f"ep:{ep.name}")
            pm.subset_hook_caller("mtoframe_register", remove_plugins=[p for p in pm.get_plugins() if p is not module])(
                registry=registry
            )
        except Exception as exc:
            registry._methods = before  # all or nothing per plugin
            registry.failures.append(
                PluginFailure(ep.name, dist, version, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            )
    registry._source = ("mtoframe", _version("mtoframe"), "builtin")
    return registry


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry(*, reload: bool = False) -> Registry:
    """The process-wide registry, discovered on first use."""
    global _registry
    with _lock:
        if _registry is None or reload:
            _registry = discover()
        return _registry
