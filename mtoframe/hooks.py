"""Hook dispatch: call a hook on each stack member in the user's order, timed, failures named.

pluggy calls the last-registered implementation first; a stack runs in the order the user wrote,
so each member gets its own subset caller and members are called one by one (DESIGN §3).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import pluggy
import torch

from . import checks, hookspecs
from .context import StepContext
from .errors import MethodError, MtoError

STEP_HOOKS = ("on_representation", "on_task_losses", "on_shared_grads", "on_after_step")
LIFECYCLE_HOOKS = ("on_train_start", "on_epoch_end")


class HookDispatcher:
    """One pluggy manager over ``members`` (``(name, object)`` pairs: the methods, then observers)."""

    def __init__(self, members: Sequence[tuple[str, object]]) -> None:
        checks.check_hookimpls(members)
        self.members = list(members)
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        for i, (name, obj) in enumerate(self.members):
            self.manager.register(obj, name=f"{i}:{name}")
        self._callers = {hook: self._ordered(hook) for hook in (*STEP_HOOKS, *LIFECYCLE_HOOKS)}

    def _ordered(self, hook: str) -> list[tuple[str, object, Callable[..., Any]]]:
        impls = {id(i.plugin): i for i in getattr(self.manager.hook, hook).get_hookimpls()}
        out: list[tuple[str, object, Callable[..., Any]]] = []
        for name, obj in self.members:
            impl = impls.get(id(obj))
            if impl is None:
                continue
            others = [o for _, o in self.members if o is not obj]
            caller: Callable[..., Any] = self.manager.subset_hook_caller(hook, remove_plugins=others)
            if not (impl.wrapper or impl.hookwrapper or impl.kwargnames):
                # one plain implementation: pluggy's call would only look its arguments up by name
                # and call it, through four frames that cost more than a small method's own work
                caller = functools.partial(_call_plain, impl.function, tuple(impl.argnames))
            out.append((name, obj, caller))
        return out

    def call(self, hook: str, timed: StepContext | None, **kwargs: Any) -> None:
        """Call ``hook`` on each member in order; record each call's time in ``timed.timings``
        (``"<hook>/<member>"``, ms) and name the member and hook on failure."""
        for name, obj, caller in self._callers[hook]:
            t0 = time.perf_counter()
            before = checks.hook_state(timed) if timed is not None else None
            try:
                caller(**kwargs)
            except (MtoError, KeyboardInterrupt):
                raise
            except BaseException as exc:  # sys.exit in a plugin's hook is a plugin failure too
                raise MethodError(f"method {name!r} failed in hook {hook}: {type(exc).__name__}: {exc}") from exc
            if timed is not None and before is not None:
                checks.check_hook_effects(hook, name, obj, timed, before)
                sync(timed)
                timed.timings[f"{hook}/{name}"] = (time.perf_counter() - t0) * 1e3


def _call_plain(function: Callable[..., Any], argnames: tuple[str, ...], **kwargs: Any) -> None:
    try:
        args = [kwargs[a] for a in argnames]
    except KeyError as exc:
        raise pluggy.HookCallError(f"hook call must provide argument {exc.args[0]!r}") from exc
    function(*args)


def sync(ctx: StepContext) -> None:
    """Wait for the device on logging steps only: timings are only written then."""
    if ctx.logging and ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
