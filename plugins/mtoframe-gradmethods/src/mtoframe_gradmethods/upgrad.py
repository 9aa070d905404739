"""UPGrad: average of the task gradients each projected onto the dual cone of the others.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
(https://arxiv.org/abs/2406.16232), as TorchJD's ``UPGrad`` with the uniform preference::

    v_i = argmin_{v : G v ≥ 0} ‖v − g_i‖²,     d = (1/T) Σ_i v_i

By duality ``v_i = Gᵀ(e_i + λ_i)`` with ``λ_i = argmin_{λ ≥ 0} ½ λᵀKλ + λᵀ K e_i`` (``K = GGᵀ``),
solved exactly by :func:`mtoframe.numerics.nnqp` (Lawson–Hanson active set on the Gram matrix).
Hence ``G d ≥ 0``: the update conflicts with no task. TorchJD normalises and regularises the
Gramian (``norm_eps``, ``reg_eps``, both 1e-4) before a ``quadprog`` solve; this
implementation solves the unregularised problem (the solution is scale-invariant, and the
active-set method needs no regularisation for rank-deficient ``K``), so the two agree up to
those epsilons, and to round-off with both set to 0 (checked in the tests). Where the dual cone
is only the orthogonal complement of the gradients' span (e.g. ten gradients spanning a plane
in every direction) the exact answer is ``d = 0``; TorchJD's regularisation returns a small
non-zero vector there. Heads receive their unweighted loss gradient (TorchJD's ``mtl_backward``).
A non-converged NNQP warns once and counts ``solver/failures/upgrad``; its last iterate
(still ``λ ≥ 0``) is used.
"""

from __future__ import annotations

import torch

from mtoframe import Method, Role, hookimpl
from mtoframe.context import StepContext
from mtoframe.numerics import nnqp

from ._common import FailureCounter, combine


class UPGrad(Method):
    __doc__ = __doc__
    name = "upgrad"
    summary = "UPGrad: mean of the projections of each task gradient onto the dual cone {v: Gv >= 0}."
    paper = "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024"
    defaults_reproduce = "TorchJD's UPGrad without its regularisation"
    roles = Role.AGGREGATOR
    heads_receive = "their unweighted loss gradient"

    @property
    def scale_degree(self) -> float | None:
        # the dual-cone weights do not depend on the scale of G
        return 1.0

    def __init__(self, options: object = None, /, **kwargs: object) -> None:
        super().__init__(options, **kwargs)
        self.failures = FailureCounter(self.name)

    @hookimpl
    def on_shared_grads(self, ctx: StepContext) -> None:
        g = ctx.grads
        K = ctx.gram().to(torch.float64)
        T = K.shape[0]
        res = nnqp(K, K)
        if not res.converged:
            self.failures.failed(ctx, "the dual-cone NNQP hit its iteration cap; using the last iterate")
        self.failures.log(ctx)
        weights = (torch.eye(T, dtype=K.dtype, device=K.device) + res.x.to(K.device)).mean(1)
        ctx.set_update(combine(weights, g))
