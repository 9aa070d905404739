"""MGDA and MGDA-UB: the min-norm point of the convex hull of the task gradients.

Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
C. R. Math. 2012; Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018 (https://arxiv.org/abs/1810.04650) for the normalisations and MGDA-UB.

With normalisers ``n_t`` and ``ĝ_t = g_t / n_t``::

    w* = argmin_{w ∈ simplex} ‖Σ_t w_t ĝ_t‖²        d = Σ_t w*_t ĝ_t   (combine="normalised")
                                                     d = Σ_t w*_t g_t    (combine="raw")

Options (defaults reproduce LibMTL's ``MGDA`` in parameter space):

* ``normalization``: ``"none"`` (``n_t = 1``, LibMTL's default ``mgda_gn``), ``"l2"`` (``‖g_t‖``),
  ``"loss"`` (``L_t``), ``"loss+"`` (``L_t ‖g_t‖``, Sener & Koltun's default). The loss modes need
  losses (``mtoframe.aggregate(..., losses=...)``).
* ``combine``: ``"normalised"`` (LibMTL, parameter space) or ``"raw"`` (Sener & Koltun's code and
  LibMTL's ``rep_grad`` path: weights from the normalised gradients, applied to the raw ones).
* ``space``: ``"params"`` (MGDA) or ``"representation"`` (MGDA-UB: rows are ``∂L_t/∂Z``, the
  update goes through the encoder in one backward).
* ``rep_rows`` (representation space only): which rows the weights ``w*`` (and the ``l2`` /
  ``loss+`` normalisers) are computed from. ``"flatten"`` (default): each row is the whole
  ``∂L_t/∂Z`` flattened, batch dimension included, as Sener & Koltun's MGDA-UB code (its
  min-norm solver takes the dot products over the full tensor). ``"batch_sum"``: each row is
  ``Σ_b ∂L_t/∂Z_b``, the gradient summed over the samples of the batch (``C·H·W`` entries), as
  LibMTL's ``rep_grad`` path; the weights are then applied to the full per-sample rows, as
  LibMTL's ``_backward_new_grads``. Needs the representation (a trainer step):
  ``mtoframe.aggregate`` has no batch dimension to sum over.
* ``solver``: ``"exact"`` (Wolfe's min-norm-point algorithm, :func:`mtoframe.numerics.min_norm_point`,
  stopping at relative duality gap ``tol`` = 1e-12, at most ``max_iter · T`` minor cycles) or
  ``"frankwolfe"`` (``max_iter`` = 250 Frank–Wolfe steps with exact line search on the device,
  Sener & Koltun's ``find_min_norm_element_FW`` without its host-checked early stop).
* ``heads_weighted``: heads receive their unweighted loss gradient (False, LibMTL's gradient
  methods) or ``w*_t``-weighted (True, Sener & Koltun's code, which back-propagates
  ``Σ w*_t L_t``).

Non-convergence of the exact solver within its iteration cap keeps the best feasible iterate
(still a convex combination), warns once (:class:`~mtoframe.SolverWarning`) and counts
``solver/failures/mgda``. Logged: ``mgda/weight/<task>``, the coefficient of each raw row in ``d``.
"""

from __future__ import annotations

import attrs
import torch

from mtoframe import GramWeighting, StepContext, Weights
from mtoframe.errors import MtoError, OptionError
from mtoframe.gram_weighting import TaskState
from mtoframe.numerics import gram as gram_matrix
from mtoframe.numerics import min_norm_point, min_norm_point_fw
from mtoframe.options import boolean, in_range, integer, one_of


@attrs.frozen(kw_only=True)
class MGDAOptions:
    normalization: str = attrs.field(default="none", validator=one_of(("none", "l2", "loss", "loss+")))
    combine: str = attrs.field(default="normalised", validator=one_of(("normalised", "raw")))
    space: str = attrs.field(default="params", validator=one_of(("params", "representation")))
    solver: str = attrs.field(default="exact", validator=one_of(("exact", "frankwolfe")))
    tol: float = attrs.field(default=1e-12, validator=in_range(0.0, 1e-2, lo_open=True))
    max_iter: int = attrs.field(default=250, validator=integer(1, 100_000))
    heads_weighted: bool = attrs.field(default=False, validator=boolean())
    rep_rows: str = attrs.field(default="flatten", validator=one_of(("flatten", "batch_sum")))

    def __attrs_post_init__(self) -> None:
        if self.rep_rows == "batch_sum" and self.space != "representation":
            raise OptionError("option 'rep_rows' of mgda is 'batch_sum', which sums representation gradients over "
                              "the batch; it needs space='representation' (got space='params')")


class MGDA(GramWeighting):
    __doc__ = __doc__
    name = "mgda"
    summary = "MGDA / MGDA-UB: min-norm point of the convex hull of the (normalised) task gradients."
    paper = "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018"
    defaults_reproduce = "LibMTL (no gradient normalisation, exact min-norm point)"
    Options = MGDAOptions
    heads_receive = "their unweighted loss gradient (heads_weighted=True: weighted by the MGDA weights w*)"
    fallback = "using the min-norm solver's last feasible iterate"

    @property
    def scale_degree(self) -> float | None:
        # w* does not depend on the scale of G; the normalised rows g/‖g‖ (l2, loss+) do not either
        scale_free_rows = self.options.normalization in ("l2", "loss+") and self.options.combine == "normalised"
        return 0.0 if scale_free_rows else 1.0

    def weigh(self, gram: torch.Tensor, state: TaskState, ctx: StepContext) -> Weights:
        n = self._normalisers(ctx, gram)
        if n is not None:
            gram = gram / (n.unsqueeze(0) * n.unsqueeze(1))
        if self.options.solver == "exact":
            res = min_norm_point(gram, tol=self.options.tol, max_iter=self.options.max_iter * gram.shape[0])
            if not res.converged:
                self.failures.record(f"the min-norm solver stopped at relative gap {res.gap:.3g} without converging")
            w = res.weights
        else:
            w = min_norm_point_fw(gram, max_iter=self.options.max_iter)
        coef = w if (n is None or self.options.combine == "raw") else w / n
        return Weights(coef, w if self.options.heads_weighted else None)

    def gram(self, ctx: StepContext, rows: torch.Tensor) -> torch.Tensor:
        """Gram matrix of the rows the weights are computed from (see ``rep_rows``)."""
        if self.options.rep_rows == "flatten":
            return ctx.gram()
        if not isinstance(ctx.z, torch.Tensor):
            raise MtoError("mgda: rep_rows='batch_sum' sums the representation gradients over the batch, which needs "
                           "the representation of a trainer step; mtoframe.aggregate has none (use rep_rows='flatten')")
        # samples of the (union, under DDP) batch are consecutive blocks of one sample's entries
        summed = ctx.grads.reshape(ctx.num_tasks, -1, ctx.z[0].numel()).sum(1)
        return gram_matrix(summed)

    def _normalisers(self, ctx: StepContext, gram: torch.Tensor) -> torch.Tensor | None:
        mode = self.options.normalization
        if mode == "none":
            return None
        if mode in ("loss", "loss+") and not ctx.has_losses:
            raise MtoError(f"mgda: normalization={mode!r} needs the task losses (pass losses= to aggregate)")
        norms = gram.diagonal().to(torch.float64).clamp_min(0).sqrt()
        if mode == "l2":
            n = norms
        else:
            loss = ctx.losses.detach().to(torch.float64)
            n = loss if mode == "loss" else loss * norms
        # a zero normaliser (zero gradient or loss) would make the row infinite; the row is zero
        # anyway (l2, loss+) or its scale is meaningless, so it keeps its raw scale
        return torch.where(n > 0, n, torch.ones_like(n))
