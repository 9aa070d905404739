from __future__ import annotations

import pytest
import torch

from mtoframe.testing.factories import gradient_families

CASES = list(gradient_families())
FULL_RANK = [c for c in CASES if c.name.split("-")[0] in ("random", "conflicting", "scale1e")
             or c.name.startswith(("scale1e-8", "scale1e8"))]


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
