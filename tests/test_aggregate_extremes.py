"""``mtoframe.aggregate`` on extreme inputs: 1e30- and 1e-30-scaled matrices give every installed
gradient method's own (rescaled) update, never a NaN, a zero or a raw LinAlgError; integer
matrices are promoted; an empty matrix is a clear error."""

from __future__ import annotations

import warnings

import pytest
import torch

import mtoframe
from mtoframe.errors import MtoError
from mtoframe.method import GRADIENT_ROLES
from mtoframe.registry import get_registry
from mtoframe.scaling import BAND, checked_inputs, scale_exponent, times_power_of_two

GRADIENT_METHODS = sorted(n for n in mtoframe.available() if get_registry().get(n).cls.roles & GRADIENT_ROLES)


def _case(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    grads = torch.randn(3, 20, generator=g, dtype=dtype)
    grads[1] -= 0.7 * grads[0]  # a conflict, so the methods do more than average
    return grads, torch.rand(3, generator=g, dtype=dtype) + 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_extreme_scale_gives_the_rescaled_update(name, scale, dtype):
    grads, losses = _case(dtype)
    degree = mtoframe.create(name).scale_degree
    assert degree is not None, f"{name} declares no scale law; its default options are homogeneous"
    reference = mtoframe.aggregate(mtoframe.create(name), grads, losses)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a solver fallback would warn: none may happen
        d = mtoframe.aggregate(mtoframe.create(name), grads * scale, losses)
    assert d.dtype == dtype
    assert torch.isfinite(d).all()
    expected = reference.to(torch.float64) * scale**degree
    assert expected.norm() > 0
    # float64: the references' absolute epsilons (DB-MTL's +1e-8) act at a slightly different
    # scale after rescaling, which moves the result at the 1e-7 level
    tol = 1e-4 if dtype == torch.float32 else 1e-6
    torch.testing.assert_close(d.to(torch.float64), expected, rtol=tol, atol=tol * float(expected.abs().max()))


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_integer_matrix_is_promoted_to_the_default_dtype(name):
    grads = torch.tensor([[3, -1, 2, 0], [-2, 4, 1, 1], [1, 1, -3, 2]])
    losses = torch.tensor([1, 2, 3])
    d = mtoframe.aggregate(mtoframe.create(name), grads, losses)
    assert d.dtype == torch.get_default_dtype()
    expected = mtoframe.aggregate(mtoframe.create(name), grads.to(torch.get_default_dtype()), losses.float())
    torch.testing.assert_close(d, expected)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_no_tasks_is_a_clear_error(name):
    with pytest.raises(MtoError, match="no rows"):
        mtoframe.aggregate(mtoframe.create(name), torch.zeros(0, 5))


def test_other_bad_inputs_are_clear_errors():
    with pytest.raises(MtoError, match="no columns"):
        checked_inputs(torch.zeros(2, 0), None)
    with pytest.raises(MtoError, match="real"):
        checked_inputs(torch.zeros(2, 3, dtype=torch.complex64), None)
    with pytest.raises(MtoError, match="shape"):
        checked_inputs(torch.zeros(2, 3), torch.zeros(3))


def test_inside_the_band_nothing_is_rescaled():
    g = torch.randn(3, 7)
    for s in (2.0**-BAND, 1e-8, 1.0, 1e8, 2.0 ** (BAND - 1)):
        assert scale_exponent(g / g.abs().max() * s) == 0
    assert scale_exponent(torch.zeros(2, 3)) == 0
    e = scale_exponent(g * 1e30)
    assert e % 8 == 0 and 2.0**-4 <= float((g * 1e30).abs().max()) / 2.0**e <= 2.0**4


def test_power_of_two_scaling_is_exact_beyond_the_float32_range_of_one_factor():
    g = torch.randn(4, 9) * 1e30  # needs 2^-128, below float32's smallest normal factor
    back = times_power_of_two(times_power_of_two(g, -128), 128)
    assert torch.equal(back, g)
    assert torch.isfinite(times_power_of_two(g, -128)).all()
