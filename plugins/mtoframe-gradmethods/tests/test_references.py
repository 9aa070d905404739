"""Agreement with TorchJD's aggregators where the conventions coincide (skipped without TorchJD)."""

from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe.testing.factories import gradient_families

agg = pytest.importorskip("torchjd.aggregation")

# K positive definite, as quadprog needs once TorchJD's regularisation is switched off
FULL = [c for c in gradient_families() if c.name.startswith(("random", "conflicting"))]


@pytest.mark.parametrize("case", FULL, ids=lambda c: c.name)
def test_upgrad_equals_torchjd_unregularised(case):
    dual = pytest.importorskip("torchjd._linalg._dual_cone")
    try:
        ref = agg.UPGrad(projector=dual.QuadprogProjector(norm_eps=0.0, reg_eps=0.0))(case.grads)
    except (TypeError, ImportError) as exc:  # another TorchJD API generation
        pytest.skip(f"TorchJD API differs: {exc}")
    d = mtoframe.aggregate("upgrad", case.grads)
    assert torch.allclose(d, ref, rtol=1e-10, atol=1e-12 * float(ref.norm()))


@pytest.mark.parametrize("case", FULL, ids=lambda c: c.name)
def test_alignedmtl_mean_equals_torchjd(case):
    ref = agg.AlignedMTL()(case.grads)
    d = mtoframe.aggregate(mtoframe.create("alignedmtl", reduction="mean"), case.grads)
    assert torch.allclose(d, ref, rtol=1e-10, atol=1e-12 * float(ref.norm()))
