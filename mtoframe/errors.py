"""Exceptions. Every message names what was wrong and what is allowed."""

from __future__ import annotations


class MtoError(Exception):
    """Base class of every mtoframe error."""


class UnknownMethodError(MtoError, KeyError):
    """A method name that no installed plugin provides."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class OptionError(MtoError, ValueError):
    """A method option with a bad value or an unknown name."""


class StackError(MtoError, ValueError):
    """A stack of methods that cannot work together; raised before training starts."""


class BatchError(MtoError, ValueError):
    """A batch whose structure does not match the trainer's tasks."""


class NonFiniteLossError(MtoError, FloatingPointError):
    """A task loss was NaN or infinite under the ``raise`` policy."""


class MethodError(MtoError, RuntimeError):
    """An exception raised inside a method's hook, re-raised naming the method and the hook."""


class SolverError(MtoError, RuntimeError):
    """A numerical solver failed or its back-end is missing."""


class PluginError(MtoError, RuntimeError):
    """A plugin could not be loaded or registered."""


class CheckpointError(MtoError, RuntimeError):
    """A checkpoint that cannot be written or read back, or that does not fit the run."""
