"""What :func:`mtoframe.aggregate` does to a bare gradient matrix before a method sees it:
check it, and bring extreme scales back into range.

A method reads a ``T×P`` matrix whose Gram matrix ``G Gᵀ`` squares its scale: at 1e30 (float32)
it overflows, at 1e-30 it underflows, and absolute epsilons (``+1e-8`` in a denominator) start
to dominate. Almost every method is positively homogeneous, ``d(cG) = c^k d(G)`` for ``c > 0``,
with a degree ``k`` it declares as :attr:`mtoframe.Method.scale_degree` (1 for most; 0 for
Nash-MTL and the normalised MGDA variants, whose update does not depend on the scale). For those,
a matrix whose largest entry lies outside ``[2^-32, 2^32]`` is divided by a power of two
``2^e`` that brings its largest entry into ``[2^-4, 2^4]`` (``e`` a multiple of 8, so inputs of
similar magnitude share it), the method runs on that, and its update is multiplied by
``2^(k·e)``. Multiplying by a power of two is exact in floating point, so inside the band
nothing changes (every method keeps its reference's behaviour, absolute epsilons included) and
outside it the result is the method's own at a scale where its numerics hold.

A stateful method given such a matrix keeps its state in the units of the rescaled matrix
(e.g. Nash-MTL's α, DB-MTL's gradient EMA): successive calls see consistent units while their
largest entries stay in the same ``2^8`` bucket, which is why ``e`` is quantised.

Finding the largest entry reads the whole ``T×P`` matrix, as much work as the Gram matrix itself.
A method that computes ``G Gᵀ`` anyway (:class:`mtoframe.GramWeighting`, which sets
:attr:`~mtoframe.Method.checks_own_scale`) is run first with the check deferred to it: its Gram
diagonal bounds the largest entry (``max_t ‖g_t‖ / √P ≤ max |G_ij| ≤ max_t ‖g_t‖``), and only when
that bound does not prove the entry inside the band does the method stop, before touching its
state, with :class:`OutOfBand`; the exact check then decides as above. The decision is the same
either way; the common case just skips one pass over ``G``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import MtoError

if TYPE_CHECKING:
    from .method import Method

#: largest entries within ``2^±BAND`` are used as given
BAND = 32
#: the rescaling exponent is a multiple of this
QUANTUM = 8
#: largest factor applied in one multiplication (exact in float32, bfloat16 and float64)
STEP = 64
# dtypes whose exponent range holds 2^±STEP factors exactly (float16's does not)
_RESCALABLE = (torch.float32, torch.float64, torch.bfloat16)
#: the matrix whose band check :func:`rescaled` deferred to the method running on it
_DEFERRED: ContextVar[Tensor | None] = ContextVar("mtoframe_deferred_scale_check", default=None)


class OutOfBand(MtoError):
    """Raised by :func:`check_deferred`: the Gram matrix does not prove the largest entry inside
    the band (internal to :func:`rescaled`, which then runs the exact check). An
    :class:`~mtoframe.errors.MtoError`, so hook dispatch passes it through unwrapped."""


def check_deferred(grads: Tensor, gram: Callable[[], Tensor]) -> None:
    """For a method with :attr:`~mtoframe.Method.checks_own_scale`, before it changes any state:
    when :func:`rescaled` deferred its band check for this very matrix, raise :class:`OutOfBand`
    unless the Gram diagonal proves the largest entry of ``grads`` inside
    ``[2^-(BAND+1), 2^BAND)`` (the band of :func:`scale_exponent`), with a factor 2 of margin for
    rounding. ``gram()`` gives ``grads gradsᵀ`` (the method's own, cached). Otherwise (a trainer
    step, another matrix) do nothing."""
    if _DEFERRED.get() is not grads:
        return
    k = gram()
    if k.requires_grad:
        k = k.detach()
    # max_t ‖g_t‖²: ‖g‖/√P ≤ max|g_i| ≤ ‖g‖. Read as Python floats: this runs right after G Gᵀ
    # has swept the CPU caches, where numpy's code is colder than torch's
    diag = k.diagonal().tolist()
    top2 = max(diag) if all(map(math.isfinite, diag)) else math.nan  # Python's max skips a NaN after the first
    if not (math.isfinite(top2) and grads.shape[1] * 2.0 ** (-2 * BAND) <= top2 < 2.0 ** (2 * BAND - 2)):
        raise OutOfBand


def checked_inputs(grads: Tensor, losses: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``grads`` (and ``losses``) as a method may read them, or :class:`MtoError` naming what is
    wrong. Integer and boolean matrices are promoted to the default floating dtype (methods
    compute norms and solve systems on them); complex ones are rejected."""
    if not isinstance(grads, Tensor):
        raise MtoError(f"grads must be a torch.Tensor (T×P), got {type(grads).__name__}")
    if grads.dim() != 2:
        raise MtoError(f"grads must be a T×P matrix, got shape {tuple(grads.shape)}")
    t, p = grads.shape
    if t == 0:
        raise MtoError(f"grads has no rows (shape {tuple(grads.shape)}): "
                       "aggregation needs at least one task's gradient")
    if p == 0:
        raise MtoError(f"grads has no columns (shape {tuple(grads.shape)}): there is no parameter to update")
    if grads.is_complex():
        raise MtoError(f"grads must be real, got dtype {grads.dtype}")
    if not grads.is_floating_point():
        grads = grads.to(torch.get_default_dtype())
    if losses is not None:
        if losses.shape != (t,):
            raise MtoError(f"losses must have shape ({t},) to match grads, got {tuple(losses.shape)}")
        if not losses.is_floating_point():
            losses = losses.to(grads.dtype)
    return grads, losses


def scale_exponent(grads: Tensor) -> int:
    """0 when the largest entry of ``grads`` is within ``2^±BAND`` (or the matrix is zero or not
    finite: nothing to rescale then); else ``e`` such that ``grads / 2^e`` has it within
    ``2^±(QUANTUM/2)``."""
    if grads.dtype not in _RESCALABLE:
        return 0
    # aminmax reads the matrix once without allocating |G| (abs().max() costs ten times more)
    low, high = torch.aminmax(grads.detach())
    top = max(-float(low), float(high))
    if top == 0.0 or not math.isfinite(top):
        return 0
    exponent = math.frexp(top)[1]
    if abs(exponent) <= BAND:
        return 0
    return QUANTUM * round(exponent / QUANTUM)


def times_power_of_two(t: Tensor, e: int) -> Tensor:
    """``t · 2^e``, exact: applied in factors of at most ``2^STEP`` (``2^128`` itself is not a
    float32)."""
    while e != 0:
        step = max(-STEP, min(STEP, e))
        t = t * 2.0**step
        e -= step
    return t


def rescaled(method: Method, grads: Tensor, run: Callable[[Tensor], Tensor]) -> Tensor:
    """``run(grads)`` for ``method``, computed on a power-of-two rescaled matrix when ``grads``
    is outside the band and the method declares its :attr:`~mtoframe.Method.scale_degree`."""
    degree = method.scale_degree
    if degree is not None and method.checks_own_scale and grads.dtype in _RESCALABLE:
        token = _DEFERRED.set(grads)
        try:
            return run(grads)
        except OutOfBand:
            pass
        finally:
            _DEFERRED.reset(token)
    e = 0 if degree is None else scale_exponent(grads)
    if degree is None or e == 0:
        return run(grads)
    d = run(times_power_of_two(grads, -e))
    if float(degree).is_integer():
        return times_power_of_two(d, int(degree) * e)
    return (d.to(torch.float64) * math.pow(2.0, degree * e)).to(d.dtype)
