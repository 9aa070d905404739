"""pytest fixtures for mtoframe plugin authors (loaded automatically through ``pytest11``)."""

from __future__ import annotations

from typing import Any

import pytest

from . import factories


@pytest.fixture
def gradient_cases() -> list[factories.GradientCase]:
    """Seeded gradient-matrix families (T from 2 to 10, degenerate and extreme scales)."""
    return list(factories.gradient_families())


@pytest.fixture
def tiny_model() -> Any:
    return factories.make_vector_model()


@pytest.fixture
def tiny_batch(tiny_model: Any) -> Any:
    return factories.make_batch(tiny_model)


@pytest.fixture
def trainer_factory() -> Any:
    """``trainer_factory(methods, model=None, lr=0.05, optimizer="sgd", **trainer_kwargs)``."""
    return factories.make_trainer


@pytest.fixture
def method_conformance() -> Any:
    """:func:`mtoframe.testing.conformance.check_method`: ``method_conformance("name", **options)``
    runs the conformance suite and raises with the full report on any failure."""
    from .conformance import check_method

    return check_method
