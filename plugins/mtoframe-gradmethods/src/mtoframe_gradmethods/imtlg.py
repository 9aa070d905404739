"""IMTL-G: the update with equal projections onto every task's unit gradient.

Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021
(https://openreview.net/forum?id=IMPnRXEWpvr), the gradient half of IMTL. Find ``α`` with
``Σ_t α_t = 1`` such that ``d = Σ_t α_t g_t`` satisfies ``d·u_1 = d·u_t`` for every ``t``
(``u_t = g_t/‖g_t‖``). The paper's closed form is
``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2:T}`` with ``D``, ``U`` the differences
``g_1 − g_t``, ``u_1 − u_t`` (LibMTL's ``IMTL`` gradient part uses the same form).

Here the same conditions are written symmetrically on the ``T×T`` Gram matrix, unknowns
``(α, c)``: ``(N⁻¹ K α)_t = c`` for every task with a non-zero gradient, ``α_t = 0`` for a zero
gradient (its unit vector is undefined; LibMTL's ``torch.inverse`` returns NaN there),
``Σ α_t = 1``; solved in float64 on the host, by the inverse of this bordered system when it is
well conditioned and by its pseudo-inverse otherwise (the same ``α`` where both apply). Where ``D Uᵀ`` is
invertible this is the paper's closed form exactly; rank-deficient cases (duplicate rows) get the
minimum-norm ``α`` satisfying the conditions. When the conditions force ``d = 0`` (e.g. three
gradients in a plane: no non-zero ``d`` has equal projections on three distinct unit vectors
there) the update is 0; TorchJD's ``IMTLG``, built differently, returns a non-zero vector. Heads
receive their unweighted loss gradient (LibMTL with IMTL-G alone). Logged: ``imtlg/weight/<task>``.

Scale: the *direction* of ``d`` does not depend on each task's gradient scale (only the unit
vectors enter the conditions), its *length* does (``Σ α_t = 1`` is over the given rows), so a
loss weighting before IMTL-G changes only the step length and is rejected as meaningless, with
one exception. The hybrid IMTL (the paper's full method, LibMTL's ``IMTL``) is the stack
``["imtll", "imtlg"]``: IMTL-L's learnable scales make the rows ``e^{s_t} ∇L_t``, IMTL-G
aggregates them, heads receive ``e^{s_t} ∇L_t`` and ``s`` the gradient of
``Σ_t e^{s_t} L_t − s_t``, exactly LibMTL's step (checked against LibMTL's formula in the
tests).
"""

from __future__ import annotations

import numpy as np
import torch

from mtoframe import GramWeighting, StepContext
from mtoframe.gram_weighting import TaskState
from mtoframe.numerics import from_host, host64

#: bordered systems whose 1-norm condition number is below this are solved by the inverse; the
#: pseudo-inverse's cut-off (``(T+1)·eps·σ_max``) only truncates at a 2-norm condition number of
#: about ``1/((T+1)·eps)`` (>1e14), so below this both give the same α, to about ``1e6·eps``
INVERSE_CONDITION = 1e6


def imtlg_weights(K: torch.Tensor) -> torch.Tensor:
    """``α`` from the Gram matrix (any device; solved in numpy on the host, where the ~20 tiny
    operations cost a fraction of torch's per-operation overhead). ``K`` is first divided by
    ``max_t K_tt`` (``α`` does not change; the cut-offs below become relative). The bordered
    system is solved by its inverse when it is well conditioned and by the pseudo-inverse
    otherwise (rank deficiency: duplicate rows), whose cut-off is torch's default,
    ``(T+1)·eps·σ_max``. A non-finite ``K`` gives NaN weights (a non-finite update, which the
    trainer's policy handles), not an exception from the SVD."""
    k = host64(K)
    T = k.shape[0]
    if not np.isfinite(k).all():
        return torch.full((T,), torch.nan, dtype=K.dtype, device=K.device)
    top = k.diagonal().max()
    if top > 0:
        k = k / top
    sq = np.clip(k.diagonal(), 0.0, None)
    active = sq > sq.max() * 1e-30
    norms = np.where(active, np.sqrt(sq), 1.0)
    A = np.zeros((T + 1, T + 1))
    A[:T, :T] = np.where(active[:, None], k / norms[:, None], np.eye(T))
    A[:T, T] = np.where(active, -1.0, 0.0)
    A[T, :T] = 1.0
    try:
        inverse = np.linalg.inv(A)
        condition = np.abs(A).sum(0).max() * np.abs(inverse).sum(0).max()
    except np.linalg.LinAlgError:
        condition = np.inf
    if not condition < INVERSE_CONDITION:
        inverse = np.linalg.pinv(A, rcond=(T + 1) * np.finfo(np.float64).eps)
    return from_host(inverse[:T, T].copy(), K)


class IMTLG(GramWeighting):
    __doc__ = __doc__
    name = "imtlg"
    summary = "IMTL-G: update with equal projections onto each task's unit gradient."
    paper = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021"
    defaults_reproduce = "the paper's closed form (as LibMTL)"
    ignores_loss_weights = ("IMTL-G's update direction is invariant to rescaling each task's gradient (only its "
                            "length changes)")
    hybrid_with = ("imtll",)
    heads_receive = "their unweighted loss gradient"

    @property
    def scale_degree(self) -> float | None:
        # α depends on directions and sums to one, so d = αᵀG scales with G
        return 1.0

    host = True

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> torch.Tensor:
        return imtlg_weights(gram)
