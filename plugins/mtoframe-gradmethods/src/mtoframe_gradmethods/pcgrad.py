"""PCGrad: project each task gradient off the gradients it conflicts with.

Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020
(https://arxiv.org/abs/2001.06782), Algorithm 1. For every task ``i``, with its own random order
of the other tasks ``j``::

    g_i^PC ← g_i^PC − min(0, g_i^PC·g_j) / ‖g_j‖² · g_j

then ``d = Σ_i g_i^PC`` (``reduction="sum"``, the paper and LibMTL, default) or the mean
(``reduction="mean"``, popular PyTorch ports). Every ``g_i^PC`` is a combination of the original
rows, so the projections run on the ``T×T`` Gram matrix (coefficients ``C``, ``g^PC = C G``)
and the ``T×D`` matrix is touched once: the output is ``C G`` (a transform, so later methods in
the stack see the projected rows). Both references also visit ``j = i``; that projection is a
no-op except after earlier projections made ``g_i^PC·g_i < 0``; the paper's ``j ≠ i`` is used.

Random orders come from Python's ``random`` seeded by ``seed`` (:class:`mtoframe.SeededOrders`;
LibMTL shuffles with ``random.shuffle`` too); its state is in ``state_dict``. Heads receive their
unweighted loss gradient (LibMTL).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from mtoframe import GramWeighting, Role, SeededOrders, StepContext
from mtoframe.gram_weighting import TaskState
from mtoframe.options import integer, one_of


@attrs.frozen(kw_only=True)
class PCGradOptions:
    reduction: str = attrs.field(default="sum", validator=one_of(("sum", "mean")))
    seed: int = attrs.field(default=0, validator=integer(0))


#: up to this many tasks the projections run on Python floats (a few dozen float operations per
#: task, no per-call dispatch), above it vectorised over the rows in numpy, whose per-call cost
#: the T² multiply-adds of a round then outweigh
PYTHON_MAX_TASKS = 12


def pcgrad_coefficients(gram: torch.Tensor, orders: Sequence[Sequence[int]]) -> torch.Tensor:
    """``C`` with ``C G`` the PCGrad rows, from the float64 host Gram matrix and per-task orders."""
    T = gram.shape[0]
    if T <= PYTHON_MAX_TASKS:
        return torch.tensor(_coefficients_on_floats(gram.tolist(), orders), dtype=torch.float64).reshape(T, T)
    K = gram.numpy()
    C = np.eye(T)
    sq = K.diagonal()
    safe = np.where(sq > 0, sq, 1.0)
    rows = np.arange(T)
    order = np.array(orders, dtype=np.int64).reshape(T, T - 1)
    with np.errstate(invalid="ignore"):  # a non-finite K gives a non-finite update, never a silent one
        for k in range(T - 1):
            j = order[:, k]
            dots = (C * K[:, j].T).sum(1)  # g_i^PC · g_j for every i at once
            C[rows, j] -= np.where((dots < 0) & (sq[j] > 0), dots / safe[j], 0.0)
    return torch.from_numpy(C)


def _coefficients_on_floats(K: list[list[float]], orders: Sequence[Sequence[int]]) -> list[list[float]]:
    # the same projections one row at a time: after G Gᵀ has swept the caches, every numpy or
    # torch call costs tens of µs and this loop over a few floats a few µs in all
    T = len(K)
    C = []
    for i, order in enumerate(orders):
        c = [0.0] * T
        c[i] = 1.0
        for j in order:
            kj = K[j]
            dot = sum(map(operator.mul, c, kj))
            if dot < 0 and kj[j] > 0:
                c[j] -= dot / kj[j]
        C.append(c)
    return C


class PCGrad(GramWeighting):
    __doc__ = __doc__
    name = "pcgrad"
    summary = "PCGrad: project each task gradient off the conflicting ones, in random order."
    paper = "Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020"
    defaults_reproduce = "paper (reduction sum); random order per task as LibMTL"
    Options = PCGradOptions
    roles = Role.TRANSFORM
    heads_receive = "their unweighted loss gradient"
    # the T-1 sequential projection rounds are dozens of tiny operations: numpy on the host costs
    # a fraction of torch's per-operation overhead (TorchJD moves the Gram matrix to the CPU too)
    host = True

    @property
    def scale_degree(self) -> float | None:
        # projections are linear in G
        return 1.0

    def reset(self) -> None:
        super().reset()
        self.rng = SeededOrders(self.options.seed)

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> torch.Tensor:
        T = gram.shape[0]
        C = pcgrad_coefficients(gram, self.rng.orders(T))
        return C / T if self.options.reduction == "mean" else C

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.rng.state()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.rng.load(state["generator"])
