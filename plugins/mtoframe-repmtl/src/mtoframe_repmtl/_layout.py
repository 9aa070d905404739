"""Shared input handling of the saliency losses: shape, precision and a scale that both terms
are exactly invariant to."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from mtoframe.errors import MtoError

_LOW_PRECISION = (torch.float16, torch.bfloat16)
#: saliencies up to this many elements take the sample scale through a temporary |S| (256 KiB in float32)
_SMALL = 1 << 16


def as_btcn(saliency: Tensor, fn: str) -> Tensor:
    """``[B, T, C, *spatial]`` -> ``[B, T, C, N]`` with ``N = prod(spatial)`` (1 for ``[B, T, C]``).

    Only the trailing spatial dimensions are merged, so a transposed ``[T, B, ...]`` saliency
    (what the trainer hands over) stays a view: no copy of the largest tensor of the step.
    """
    if not isinstance(saliency, Tensor):
        raise TypeError(f"{fn}: saliency must be a tensor, got {type(saliency).__name__}")
    if saliency.dim() < 3:
        raise MtoError(
            f"{fn}: saliency must have shape [B, T, C, H, W] or [B, T, C], got {tuple(saliency.shape)}"
        )
    if not saliency.is_floating_point():
        raise MtoError(f"{fn}: saliency must be a floating-point tensor, got {saliency.dtype}")
    s = saliency.unsqueeze(-1) if saliency.dim() == 3 else saliency.flatten(3)
    # Autocast is off inside the terms, so half inputs would run their Gram products in half.
    return s.float() if s.dtype in _LOW_PRECISION else s


def full_precision(s: Tensor) -> AbstractContextManager[None]:
    """Autocast off: the terms hold fourth powers of saliencies, far outside half's range. (No
    context at all when autocast is off already: entering one costs µs on every step.)"""
    if not torch.is_autocast_enabled(s.device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=s.device.type, enabled=False)


def sample_scale(s: Tensor) -> Tensor:
    """Detached ``1 / max |S_b|`` per sample (``[B]``; 1 where a sample's saliency is all zero), for
    ``S`` of any shape ``[B, ...]``.

    TSR and CSA are exactly invariant to rescaling every task's saliency of one sample by the
    same positive number, so the terms multiply their *small* intermediates by this factor: the
    gradient is unchanged and float32 never underflows in ``‖S Sᵀ‖²`` (saliencies of batch-mean
    losses are O(1/(B·H'W')), so their fourth powers leave float32's range on real images).
    """
    with torch.no_grad():
        dims = tuple(range(1, s.dim()))
        if s.numel() <= _SMALL:  # fewer operations, where each costs more than its arithmetic
            peak = s.abs().amax(dim=dims)
        else:  # amax/amin instead of abs().amax(): no temporary the size of S
            peak = torch.maximum(s.amax(dim=dims), -s.amin(dim=dims))
        return torch.where(peak > 0, peak.reciprocal(), 1.0)


def tiny(s: Tensor) -> float:
    return torch.finfo(s.dtype).tiny
