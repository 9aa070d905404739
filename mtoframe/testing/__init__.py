"""Test helpers for mtoframe and its plugin authors: seeded gradient-matrix families and a tiny
multi-task model, batch and trainer factory. Also exposed as pytest fixtures by
:mod:`mtoframe.testing.pytest_plugin` (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from .factories import (
    GradientCase,
    PoisonGradient,
    assert_heads_get_unweighted_gradients,
    gradient_families,
    head_grads,
    make_batch,
    make_conv_model,
    make_tasks,
    make_trainer,
    make_vector_model,
    step_keeping_grads,
)

__all__ = [
    "GradientCase",
    "PoisonGradient",
    "assert_heads_get_unweighted_gradients",
    "gradient_families",
    "head_grads",
    "make_batch",
    "make_conv_model",
    "make_tasks",
    "make_trainer",
    "make_vector_model",
    "step_keeping_grads",
]
