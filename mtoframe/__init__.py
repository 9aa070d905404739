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
from .failures import FailureCounter, SolverWarning
from .gram_weighting import GramWeighting, StateSpec, TaskState, Weights
from .hookspecs import HOOK_API_VERSION, hookimpl, hookspec
from .loss_weighting import LossWeighting
from .method import Method, Role, Space
from .method_state import SeededGenerator, SeededOrders, expect_keys
from .model import MultiTaskModel, Task
from .numerics import combine
from .registry import Registry, get_registry
from .stack import Stack
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "HOOK_API_VERSION",
    "BatchError",
    "CheckpointError",
    "FailureCounter",
    "GramWeighting",
    "LossWeighting",
    "Method",
    "MethodError",
    "MtoError",
    "MultiTaskModel",
    "NonFiniteLossError",
    "OptionError",
    "PluginError",
    "Registry",
    "Role",
    "SeededGenerator",
    "SeededOrders",
    "SolverError",
    "SolverWarning",
    "Space",
    "Stack",
    "StackError",
    "StateSpec",
    "StepContext",
    "Task",
    "TaskState",
    "Trainer",
    "UnknownMethodError",
    "Weights",
    "aggregate",
    "as_method",
    "available",
    "combine",
    "create",
    "expect_keys",
    "get_registry",
    "hookimpl",
    "hookspec",
]
