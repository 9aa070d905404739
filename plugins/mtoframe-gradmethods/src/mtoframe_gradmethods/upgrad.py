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

The NNQP starts from the previous step's support of ``Λ`` (same tasks): where consecutive Gram
matrices are close (small steps on similar batches) the active sets agree and one batched solve
plus the KKT check ends it; on unrelated batches it is about as good as the default guess. The
guess changes only where the active-set method starts, never the update (the projections are
unique; ``Λ`` too where ``K`` is non-singular); it is not checkpointed.
"""

from __future__ import annotations

import torch

from mtoframe import GramWeighting, StepContext
from mtoframe.gram_weighting import TaskState
from mtoframe.numerics import nnqp


class UPGrad(GramWeighting):
    __doc__ = __doc__
    name = "upgrad"
    summary = "UPGrad: mean of the projections of each task gradient onto the dual cone {v: Gv >= 0}."
    paper = "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024"
    defaults_reproduce = "TorchJD's UPGrad without its regularisation"
    heads_receive = "their unweighted loss gradient"
    fallback = "using the NNQP's last iterate"

    @property
    def scale_degree(self) -> float | None:
        # the dual-cone weights do not depend on the scale of G
        return 1.0

    def reset(self) -> None:
        super().reset()
        #: the tasks and support ``Λ > 0`` of the last solution: the next solve's starting guess
        self._support: tuple[tuple[str, ...], torch.Tensor] | None = None

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> torch.Tensor:
        tasks = tuple(ctx.tasks)
        last = self._support
        res = nnqp(gram, gram) if last is None or last[0] != tasks else nnqp(gram, gram, start=last[1])
        self._support = (tasks, res.x > 0)
        if not res.converged:
            self.failures.record("the dual-cone NNQP hit its iteration cap")
        # v_i = Gᵀ(e_i + λ_i): the mean over i weights row t by the mean of (I + Λ)[t, :]
        return (torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) + res.x.to(gram.device)).mean(1)
