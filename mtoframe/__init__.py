"""mtoframe: multi-task optimisation on PyTorch.

Methods are pluggy plugins discovered through the ``mtoframe`` entry-point group and stacked in
the user's order; :class:`Stack` runs one step's gradient pipeline for any model and loop; :class:`Trainer` is a
loop around one (see ``mtoframe/trainer.py``).
"""

from __future__ import annotations

from .api import aggregate, as_method, available, create
from .context import StepContext
from .errors import (
    BatchError,
    CheckpointError,
    MethodError,
    MtoError,
    NonFiniteLossError,
    OptionError,
    PluginError,
    SolverError,
    StackError,
    UnknownMethodError,
)
from .hookspecs import HOOK_API_VERSION, hookimpl, hookspec
from .method import Method, Role, Space
from .model import MultiTaskModel, Task
from .registry import Registry, get_registry
from .stack import Stack
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "HOOK_API_VERSION",
    "BatchError",
    "CheckpointError",
    "Method",
    "MethodError",
    "MtoError",
    "MultiTaskModel",
    "NonFiniteLossError",
    "OptionError",
    "PluginError",
    "Registry",
    "Role",
    "SolverError",
    "Space",
    "Stack",
    "StackError",
    "StepContext",
    "Task",
    "Trainer",
    "UnknownMethodError",
    "aggregate",
    "as_method",
    "available",
    "create",
    "get_registry",
    "hookimpl",
    "hookspec",
]
