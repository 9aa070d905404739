"""Operations the models share, written for cheap derivatives of every order."""

from __future__ import annotations

from torch import Tensor

#: ``F.normalize``'s default floor on the norm
NORM_EPS = 1e-12


def unit_vectors(x: Tensor, dim: int = 1) -> Tensor:
    """``x / max(‖x‖₂, ε)`` along ``dim``: ``F.normalize``'s function, as ``x · rsqrt(max(Σx², ε²))``.

    The same values up to rounding, and the same gradient where the floor binds (none through the
    norm). Written with element-wise products because a saliency method differentiates the head
    twice: ``F.normalize`` goes through ``vector_norm``, whose backward divides by the norm and
    whose double backward is several more passes over the prediction.
    """
    return x * x.square().sum(dim, keepdim=True).clamp_min(NORM_EPS * NORM_EPS).rsqrt()
