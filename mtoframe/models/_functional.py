"""Operations the models share, written for cheap derivatives of every order."""

from __future__ import annotations

import functools

import torch
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


def upsample_bilinear(x: Tensor, scale: int, *, align_corners: bool) -> Tensor:
    """``F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=...)`` of ``[..., H, W]``,
    as ``A_H · x · A_Wᵀ`` with the interpolation matrices of :func:`interpolation_matrix`.

    The same values up to rounding (PyTorch's source-index rule, including the clamp at the
    border); in a half dtype the weights are rounded to it too: exact for a power-of-two scale
    without ``align_corners`` (multiples of ``1/(2·scale)``), within the dtype's precision otherwise.

    Written as two matrix products because a dense head's up-sampling runs at the loss's
    resolution: its derivatives (the adjoint products) are matrix products too, where
    ``upsample_bilinear2d``'s backward on CPU scatters pixel by pixel, and a saliency method runs
    the backward twice and the forward once more in its second-order pass.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    h, w = x.shape[-2:]
    rows = interpolation_matrix(h, h * scale, align_corners=align_corners, dtype=x.dtype, device=x.device)
    cols = rows if w == h else interpolation_matrix(w, w * scale, align_corners=align_corners, dtype=x.dtype,
                                                    device=x.device)
    return rows @ (x @ cols.T)


@functools.lru_cache(maxsize=32)
def interpolation_matrix(n_in: int, n_out: int, *, align_corners: bool, dtype: torch.dtype,
                         device: torch.device) -> Tensor:
    """``[n_out, n_in]`` linear-interpolation weights along one axis, PyTorch's rule: output ``i``
    reads source position ``i · (n_in − 1)/(n_out − 1)`` with ``align_corners``, else
    ``max((i + ½) · n_in/n_out − ½, 0)``, between its floor and the next index (clamped to the
    last). Built in float64 and cached per size, dtype and device. A first call under
    ``torch.inference_mode`` still makes an ordinary tensor, so that a later training step can
    save it for its backward."""
    with torch.inference_mode(False):
        dst = torch.arange(n_out, dtype=torch.float64)
        if align_corners:
            src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        else:
            src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
        lo = src.floor().long().clamp_max(n_in - 1)
        hi = (lo + 1).clamp_max(n_in - 1)
        frac = src - lo
        a = torch.zeros(n_out, n_in, dtype=torch.float64)
        out = torch.arange(n_out)
        a.index_put_((out, lo), 1.0 - frac, accumulate=True)
        a.index_put_((out, hi), frac, accumulate=True)
        return a.to(dtype=dtype, device=device)
