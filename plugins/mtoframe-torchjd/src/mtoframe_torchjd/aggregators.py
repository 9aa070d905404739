"""The TorchJD aggregators exposed as ``torchjd.<name>`` methods (TorchJD 0.18 semantics).

Every option default is TorchJD's own default, so each method reproduces
``torchjd.aggregation.<Class>()`` exactly (``torchjd.pcgrad``: with torch's global RNG seeded by
``seed``, see :attr:`~mtoframe_torchjd.adapter.TorchJDMethod.uses_rng`); ``space`` (mtoframe's) picks the
gradient matrix:
shared-parameter gradients (``"params"``, default) or gradients w.r.t. the representation.
TorchJD's ``pref_vector`` is not exposed: its default (uniform preference) is used.

Not exposed: stateful or randomised aggregators (``GradVac``, ``GradDrop``, ``Random``,
``NashMTL``) whose state TorchJD keeps outside any ``state_dict`` mtoframe could checkpoint, and
those needing extra back-ends or task-count-specific arguments (``CAGrad``, ``Krum``,
``TrimmedMean``, ``Constant``); mtoframe's own plugins provide most of them.
"""

from __future__ import annotations

from typing import Any

import attrs

from mtoframe.options import in_range, integer, one_of

from .adapter import TorchJDMethod


def _space_field() -> Any:
    """mtoframe's ``space`` option, shared by every aggregator here."""
    return attrs.field(default="params", validator=one_of(("params", "representation")))


@attrs.frozen(kw_only=True)
class SpaceOptions:
    space: str = _space_field()


@attrs.frozen(kw_only=True)
class ProjectorOptions:
    #: TorchJD's QuadprogProjector: the Gramian is divided by its trace unless below norm_eps ...
    norm_eps: float = attrs.field(default=1e-4, validator=in_range(0.0))
    #: ... and reg_eps is added to its diagonal so the QP is strictly convex
    reg_eps: float = attrs.field(default=1e-4, validator=in_range(0.0))
    space: str = _space_field()


class _Projecting(TorchJDMethod):
    Options = ProjectorOptions

    def build(self) -> Any:
        from torchjd import aggregation
        from torchjd.linalg import QuadprogProjector

        projector = QuadprogProjector(norm_eps=self.options.norm_eps, reg_eps=self.options.reg_eps)
        return getattr(aggregation, self.aggregator_name)(projector=projector)


class UPGrad(_Projecting):
    """Average of each task gradient projected onto the dual cone of all of them (non-conflicting)."""

    name = "torchjd.upgrad"
    summary = "TorchJD UPGrad: mean of task gradients projected onto the dual cone {v: Gv >= 0}."
    aggregator_name = "UPGrad"


class DualProj(_Projecting):
    """The mean gradient projected onto the dual cone of the task gradients."""

    name = "torchjd.dualproj"
    summary = "TorchJD DualProj: mean gradient projected onto the dual cone of the task gradients."
    aggregator_name = "DualProj"


@attrs.frozen(kw_only=True)
class MGDAOptions:
    epsilon: float = attrs.field(default=1e-3, validator=in_range(0.0))
    max_iters: int = attrs.field(default=100, validator=integer(1))
    space: str = _space_field()


class MGDA(TorchJDMethod):
    """Min-norm point of the convex hull of the task gradients by Frank–Wolfe (Sener & Koltun 2018)."""

    name = "torchjd.mgda"
    summary = "TorchJD MGDA: min-norm convex combination of task gradients (Frank-Wolfe)."
    paper = "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018 (via TorchJD)"
    aggregator_name = "MGDA"
    Options = MGDAOptions

    def build(self) -> Any:
        from torchjd.aggregation import MGDA as Aggregator

        return Aggregator(epsilon=self.options.epsilon, max_iters=self.options.max_iters)


@attrs.frozen(kw_only=True)
class AlignedMTLOptions:
    scale_mode: str = attrs.field(default="min", validator=one_of(("min", "median", "rmse")))
    space: str = _space_field()


class AlignedMTL(TorchJDMethod):
    """Gradients aligned by the condition-number-reducing whitening of Senushkin et al. (CVPR 2023)."""

    name = "torchjd.alignedmtl"
    summary = "TorchJD Aligned-MTL: stabilise the gradient system's condition number."
    paper = "Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023 (via TorchJD)"
    aggregator_name = "AlignedMTL"
    Options = AlignedMTLOptions

    def build(self) -> Any:
        from torchjd.aggregation import AlignedMTL as Aggregator

        return Aggregator(scale_mode=self.options.scale_mode)


class IMTLG(TorchJDMethod):
    name = "torchjd.imtlg"
    summary = "TorchJD IMTL-G: update with equal projections onto every unit task gradient."
    paper = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021 (via TorchJD)"
    aggregator_name = "IMTLG"
    Options = SpaceOptions


@attrs.frozen(kw_only=True)
class SeededOptions:
    #: seed of the method's private random stream (TorchJD itself draws from the global RNG)
    seed: int = attrs.field(default=0, validator=integer(0))
    space: str = _space_field()


class PCGrad(TorchJDMethod):
    """Each gradient projected off the others it conflicts with, in a random order; summed."""

    name = "torchjd.pcgrad"
    summary = "TorchJD PCGrad: project away conflicting components in random order, summed."
    paper = "Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020 (via TorchJD)"
    aggregator_name = "PCGrad"
    Options = SeededOptions
    uses_rng = True


class ConFIG(TorchJDMethod):
    name = "torchjd.config"
    summary = "TorchJD ConFIG: conflict-free direction from the pseudo-inverse of unit gradients."
    paper = ("Liu et al., ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks, ICLR 2025 "
             "(via TorchJD)")
    aggregator_name = "ConFIG"
    Options = SpaceOptions


class Mean(TorchJDMethod):
    name = "torchjd.mean"
    summary = "TorchJD Mean: average of the task gradients."
    aggregator_name = "Mean"
    Options = SpaceOptions


class Sum(TorchJDMethod):
    name = "torchjd.sum"
    summary = "TorchJD Sum: sum of the task gradients (= mtoframe's EW on the shared parameters)."
    aggregator_name = "Sum"
    Options = SpaceOptions


METHODS: tuple[type[TorchJDMethod], ...] = (UPGrad, DualProj, MGDA, AlignedMTL, IMTLG, PCGrad, ConFIG, Mean, Sum)
