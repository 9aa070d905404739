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

A method name registered by two distributions goes to neither: both stay reachable as
``distribution:name`` (e.g. ``mtoframe-gradmethods:pcgrad``), the conflict is listed by
``mtoframe plugins``, and the bare name raises an error naming both until one of them is left out
with the variables above. The core's names cannot be taken: a plugin's method of that name is
refused (and reported), its other methods load.
"""

from __future__ import annotations

import os
import re
import threading
import traceback
from collections.abc import Iterable
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
ENV_VARS = ("MTOFRAME_PLUGINS", "MTOFRAME_DISABLE_PLUGINS", "MTOFRAME_DISABLE_PLUGIN_AUTOLOAD")
HOOK_NAMES = ("on_train_start", "on_representation", "on_task_losses", "on_shared_grads", "on_after_step",
              "on_epoch_end")


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
    if isinstance(v, attrs.Factory):  # type: ignore[arg-type]  # attrs types Factory as a function
        return _plain(v.factory())
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


@attrs.frozen
class Conflict:
    """A method name registered by more than one distribution: used by none of them."""

    name: str
    claimants: tuple[MethodInfo, ...]

    def describe(self) -> str:
        who = " and ".join(f"{i.distribution} {i.version} (entry point {i.plugin})" for i in self.claimants)
        picks = " or ".join(repr(f"{i.distribution}:{self.name}") for i in self.claimants)
        return (f"method {self.name!r} is registered by {who}, so the bare name is used by neither; "
                f"name one explicitly ({picks}) or load only one of them with MTOFRAME_PLUGINS / "
                "MTOFRAME_DISABLE_PLUGINS")


class Registry:
    """Name -> :class:`MethodInfo`. Filled by ``mtoframe_register`` implementations."""

    def __init__(self) -> None:
        self._methods: dict[str, MethodInfo] = {}
        self._qualified: dict[str, MethodInfo] = {}
        self._staged: dict[str, MethodInfo] | None = None  # the plugin being loaded (all or nothing)
        self.failures: list[PluginFailure] = []
        self.conflicts: dict[str, Conflict] = {}
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
        info = MethodInfo(cls.name, cls, dist, version, plugin)
        target = self._methods if self._staged is None else self._staged
        if cls.name in target:
            other = target[cls.name]
            raise PluginError(
                f"method {cls.name!r} from {dist} clashes with the one from {other.distribution} ({other.plugin})"
            )
        core = self._methods.get(cls.name)
        if self._staged is not None and core is not None and core.plugin == "builtin":  # never taken over
            self.failures.append(PluginFailure(plugin, dist, version, (
                f"method {cls.name!r} clashes with the one from {core.distribution} ({core.plugin}); it is not "
                "registered (the plugin's other methods are)")))
            return
        # Option error messages name the method. An options class shared by several methods
        # (torchjd.upgrad and torchjd.dualproj) gets a subclass per method, so each is named right.
        owner = cls.Options.__dict__.get("__method_name__")
        if owner is not None and owner != cls.name:
            cls.Options = type(cls.Options.__name__, (cls.Options,), {"__method_name__": cls.name})
        else:
            cls.Options.__method_name__ = cls.name  # type: ignore[attr-defined]
        target[cls.name] = info

    def _commit(self, infos: Iterable[MethodInfo]) -> None:
        """Register a loaded plugin's methods; a name another distribution already has becomes a
        :class:`Conflict`, taken away from both."""
        for info in infos:
            self._qualified.setdefault(_qualified(info.distribution, info.name), info)
            if info.name in self.conflicts:
                old = self.conflicts[info.name]
                self.conflicts[info.name] = Conflict(info.name, (*old.claimants, info))
            elif info.name in self._methods:
                self.conflicts[info.name] = Conflict(info.name, (self._methods.pop(info.name), info))
            else:
                self._methods[info.name] = info

    def get(self, name: str) -> MethodInfo:
        """The method registered as ``name``, or as ``distribution:name``."""
        dist, sep, short = name.partition(":")
        if sep:
            info = self._qualified.get(_qualified(dist, short))
            if info is None and self._methods.get(short) is not None and _same(self._methods[short].distribution, dist):
                info = self._methods[short]
            if info is not None:
                return info
            sources = [i.distribution for i in self._qualified.values() if i.name == short]
            raise UnknownMethodError(f"no method {short!r} from distribution {dist!r}; "
                                     + (f"{short!r} comes from: {', '.join(sources)}" if sources else
                                        f"installed methods: {', '.join(sorted(self._methods))}"))
        if name in self.conflicts:
            raise PluginError(self.conflicts[name].describe())
        try:
            return self._methods[name]
        except KeyError:
            hint = ""
            if self.failures:
                hint = "; plugins that failed to load: " + ", ".join(f"{f.plugin} ({f.error})" for f in self.failures)
            env = [f"{v}={os.environ[v]!r}" for v in ENV_VARS if os.environ.get(v)]
            if env:
                hint += f"; plugin loading is restricted by {', '.join(env)}"
            raise UnknownMethodError(
                f"unknown method {name!r}; installed methods: {', '.join(sorted(self._methods)) or '(none)'}{hint}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._methods)

    def infos(self) -> list[MethodInfo]:
        return [self._methods[n] for n in self.names()]


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _same(a: str, b: str) -> bool:
    return _norm(a) == _norm(b)


def _qualified(dist: str, name: str) -> str:
    return f"{_norm(dist)}:{name}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {_norm(x.strip()) for x in raw.split(",") if x.strip()}


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
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    for ep in eps:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        keys = {_norm(ep.name), _norm(dist)}
        if (allow is not None and not keys & allow) or (block is not None and keys & block):
            continue
        _load_plugin(registry, pm, ep, dist, version)
    registry._source = ("mtoframe", _version("mtoframe"), "builtin")
    known = {_norm(k) for ep in eps for k in (ep.name, ep.dist.name if ep.dist is not None else "?")}
    for var, names in (("MTOFRAME_PLUGINS", allow), ("MTOFRAME_DISABLE_PLUGINS", block)):
        for name in sorted((names or set()) - known):
            registry.failures.append(PluginFailure(name, "?", "?", (
                f"{var} names {name!r}, which is no installed plugin's entry point or distribution; "
                f"installed: {', '.join(sorted(known)) or '(none)'}")))
    return registry


def _load_plugin(registry: Registry, pm: pluggy.PluginManager, ep: Any, dist: str, version: str) -> None:
    """Import and register one entry point; any failure (``sys.exit`` included, a real Ctrl-C
    excepted) is recorded against it and nothing of it is registered."""
    def fail(error: str, detail: str = "") -> None:
        registry.failures.append(PluginFailure(ep.name, dist, version, error, detail))

    try:
        module = ep.load()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a broken third-party plugin must not take the others down
        fail(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return
    reason = _hook_api_failure(module)
    if reason:
        fail(reason)
        return
    registry._source, registry._staged = (dist, version, ep.name), {}
    try:
        pm.register(module, name=f"ep:{ep.name}")
        pm.subset_hook_caller("mtoframe_register", remove_plugins=[p for p in pm.get_plugins() if p is not module])(
            registry=registry
        )
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # all or nothing per plugin
        fail(f"{type(exc).__name__}: {exc}", traceback.format_exc())
    else:
        registry._commit(registry._staged.values())
    finally:
        registry._staged = None


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry(*, reload: bool = False) -> Registry:
    """The process-wide registry, discovered on first use."""
    global _registry
    with _lock:
        if _registry is None or reload:
            _registry = discover()
        return _registry
