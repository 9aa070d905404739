"""Rep-MTL: representation-level task saliency regularisers (TSR + CSA).

Wang, Li, Xu, "Rep-MTL: Unleashing the Power of Representation-level Task Saliency for
Multi-Task Learning", ICCV 2025, https://arxiv.org/abs/2507.21049. The authors' repository holds
only a README; this is written from the paper (``METHODS.md``, Rep-MTL section).

Objective, one backward::

    Σ_t w_t L_t + λ_tsr · L_tsr(S) + λ_csa · L_csa(S),      S_t = ∂L_t/∂Z  (create_graph=True)

``S`` is the saliency of the losses as they reach this method in the stack (after any earlier
loss transform, including ``log_transform`` below), unweighted. Because ``S`` depends on the
head parameters and, through ``Z``, on the encoder, the regulariser's gradient is second order
and reaches both. The saliency comes from the core's gradient engine, computed once per step and
shared: a gradient method in representation space reads the same tensor, and in parameter space
the engine turns it into per-task encoder gradients with one VJP per task.

Stacking (DESIGN §3): ``tsr`` and ``csa`` are registered regularisers, so with a gradient method
(Nash-MTL, CAGrad, ...) the update is that method's aggregation of the task gradients **plus** the
gradient of ``λ_tsr·L_tsr + λ_csa·L_csa``. With a loss method (FAMO, UW, ...) place Rep-MTL
before it to regularise the raw losses' saliency, after it to regularise the transformed ones'.

Options (defaults in brackets):

``lambda_tsr``, ``lambda_csa`` [0.001, 0.001]
    a measured choice, not the paper's: its sensitivity anchor is 0.9 (grid 0.7–1.5).
``tau`` [2.0]
    CSA temperature; **not reported in the paper**; a measured choice (see below).
``use_tsr``, ``use_csa`` [True, True]
    for the paper's ablation.
``log_transform`` [False]
    replace each loss by ``log(L_t + 1e-8)`` before the saliency. The paper's appendix states that
    task losses are log-transformed, but its ablation table's "TSR + CSA" row matches the
    no-log setting; the literal method (regularisers only) is the default.
``negatives`` ["anchor"]
    CSA negatives: other samples' anchors (literal reading) or ``"task"``, other samples' task
    Grams (see :mod:`mtoframe_repmtl.csa`).
``positive_in_denominator`` [False]
    include the positive in CSA's log-sum-exp (InfoNCE form) or not (literal reading).

How the defaults were chosen (``docs/BENCHMARKS.md``, "Rep-MTL defaults by measurement"): with
``mtoframe bench --quality``'s paired harness (same seeds and data order as EW, 3 seeds, last-epoch
checkpoint) on ``scenes`` and on MultiMNIST from real digits, the full grid τ ∈ {0.07, 0.2, 0.5,
1, 2} × λ ∈ {0.1, 0.3, 0.9} plus λ ∈ {0.03, 0.01, 0.003, 0.001} at τ = 2 (where the grid pointed)
and 6 settings with ``positive_in_denominator=True``, selecting on the **validation** split only:
the best mean paired difference to EW in Δp_task over both datasets among the settings whose 95%
interval does not lie below 0 on either. **No setting beats EW**: every one of the 25 has a
negative mean val difference to EW and none has an interval above 0; the InfoNCE variant is within
2.2 points (mostly 1) of the literal form wherever both were run. Larger τ and smaller λ are
broadly less harmful (CSA's gradient is of order λ/τ and does not shrink as the task losses
fall): τ = 0.07 (the MoCo value first shipped) costs 7–41 points of
Δp_task on MultiMNIST at every λ; λ = 0.9 is worse than EW on MultiMNIST at every τ. The rule
picks the smallest λ swept, λ = 0.001 at τ = 2 (mean val −0.27): within noise of EW on both test
splits (MultiMNIST −0.39 [−3.61, +2.83], scenes +0.05 [−0.37, +0.46]). That is the EW limit
(λ → 0 is EW exactly), not a gain: at these budgets (100–250 steps on CPU) Rep-MTL's regularisers
are a cost, and the shipped default keeps that cost within noise. The paper's gains are on full
NYUv2/Cityscapes/Office schedules, which we have not reproduced; set λ and τ explicitly (the
paper's λ anchor is 0.9) to study that regime.

Heads receive their task's (weighted) loss gradient plus the regulariser's gradient. Logs
``reg/tsr``, ``reg/csa`` (λ-scaled), ``repmtl/cos_pos``, ``repmtl/cos_neg`` and
``repmtl/entropy/<task>`` (task t's share of the TSR entropy) and ``repmtl/reg_grad_ratio``
(``‖∂(λ_tsr L_tsr + λ_csa L_csa)/∂Z‖ / ‖Σ_t ∂L_t/∂Z‖``, the diagnostic of regulariser dominance:
above 1 the regularisers, not the tasks, steer the encoder) on logging steps.

Multi-input batches (Office: each task its own images) are rejected with an error: there every
other task's saliency on a task's images is 0, so TSR and CSA are undefined, and pairing
different images by batch index would be a different method.

Under torch.distributed CSA's negatives are the global batch's (see :mod:`mtoframe_repmtl.csa`),
each rank's terms are means over its own samples (the trainer's mean of ``.grad`` then gives the
union's gradient), and the regulariser values and logs are all-reduced to the union's.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
import torch

from mtoframe import Method, Role, hookimpl
from mtoframe.context import StepContext
from mtoframe.distributed import all_reduce_mean, is_distributed
from mtoframe.errors import MtoError
from mtoframe.options import boolean, in_range, one_of

from .csa import DEFAULT_TAU, NEGATIVES, csa_and_tsr, csa_terms, negative_mask
from .tsr import tsr_terms

#: the same guard DB-MTL uses for ``log(L_t)`` when a loss reaches 0.
LOG_EPS = 1e-8
#: λ_tsr = λ_csa, chosen with τ = DEFAULT_TAU by the sweep in docs/BENCHMARKS.md (not the paper's 0.9)
DEFAULT_LAMBDA = 0.001


@attrs.frozen(kw_only=True)
class RepMTLOptions:
    __method_name__ = "repmtl"

    lambda_tsr: float = attrs.field(default=DEFAULT_LAMBDA, validator=in_range(0.0, math.inf, hi_open=True))
    lambda_csa: float = attrs.field(default=DEFAULT_LAMBDA, validator=in_range(0.0, math.inf, hi_open=True))
    tau: float = attrs.field(default=DEFAULT_TAU, validator=in_range(0.0, math.inf, lo_open=True, hi_open=True))
    use_tsr: bool = attrs.field(default=True, validator=boolean())
    use_csa: bool = attrs.field(default=True, validator=boolean())
    log_transform: bool = attrs.field(default=False, validator=boolean())
    negatives: str = attrs.field(default="anchor", validator=one_of(NEGATIVES))
    positive_in_denominator: bool = attrs.field(default=False, validator=boolean())


class RepMTL(Method):
    __doc__ = __doc__

    name = "repmtl"
    summary = "Rep-MTL: task-saliency entropy (TSR) and cross-task saliency alignment (CSA) regularisers."
    paper = "Wang, Li, Xu, Rep-MTL, ICCV 2025, https://arxiv.org/abs/2507.21049"
    defaults_reproduce = (
        "measured, not the paper's: λ_tsr = λ_csa = 0.001 and τ = 2 (τ is not reported by the paper; its λ anchor "
        "is 0.9), "
        "the least harmful setting of a τ × λ sweep on scenes and MultiMNIST selected on validation data "
        "(docs/BENCHMARKS.md); no setting beat EW, and smaller λ is closer to EW; no official code exists"
    )
    Options = RepMTLOptions
    # What the class may do; an instance is a loss method only with log_transform=True.
    roles = Role.REGULARISER | Role.LOSS
    heads_receive = ("their task's (weighted) loss gradient plus the gradient of λ_tsr·L_tsr + λ_csa·L_csa "
                     "(second order)")

    def __init__(self, options: Any = None, /, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.roles = Role.REGULARISER | (Role.LOSS if self.options.log_transform else Role.NONE)  # type: ignore[misc]

    @property
    def rep_grads(self) -> Literal["none", "plain", "differentiable"]:
        return "differentiable" if self.options.use_tsr or self.options.use_csa else "none"

    @hookimpl
    def on_task_losses(self, ctx: StepContext) -> None:
        o = self.options
        if o.log_transform:
            ctx.losses = torch.log(ctx.losses + LOG_EPS)
        if not (o.use_tsr or o.use_csa):
            return
        if ctx.slices is not None:
            # Each task's loss reaches only its own images' rows of Z, so every other task's
            # saliency there is 0: TSR's entropy would be 0 and CSA's positives would pair a
            # sample with zeros, silently. Pairing different images by batch index is not the
            # paper's method (it aligns the tasks' saliency on the same sample).
            raise MtoError(
                "repmtl needs every task's loss on the same samples (single-input batches "
                "(inputs, {task: target})); this batch is multi-input ({task: (inputs, target)}, e.g. "
                f"Office) with each of {list(ctx.slices)} on its own images, where the saliency "
                "regularisers are undefined"
            )
        if isinstance(ctx.z, torch.Tensor) and ctx.z.dim() < 2:
            raise MtoError(
                "repmtl needs a representation with channels per sample (Z of shape [B, C] or [B, C, H, W]): its "
                f"saliencies are compared channel by channel; got Z of shape {tuple(ctx.z.shape)}"
            )
        s = ctx.rep_grads(differentiable=True).transpose(0, 1)  # [B, T, ...], a view
        distributed = is_distributed()
        stats = ctx.logging or distributed
        reg: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        csa_args = {"negatives": o.negatives, "positive_in_denominator": o.positive_in_denominator}
        if o.use_csa and o.use_tsr:  # one reading of the saliency for both (see csa_and_tsr)
            csa, pos, neg, tsr, per_task = csa_and_tsr(s, o.tau, **csa_args)
        elif o.use_csa:
            csa, pos, neg = csa_terms(s, o.tau, **csa_args)
        else:
            tsr, per_task = tsr_terms(s)
        if o.use_tsr:
            reg["tsr"] = o.lambda_tsr * tsr
            if stats:
                logs.update({f"repmtl/entropy/{name}": h for name, h in zip(ctx.tasks, per_task, strict=True)})
        if o.use_csa:
            reg["csa"] = o.lambda_csa * csa
            if stats:
                logs["repmtl/cos_pos"] = pos.mean()
                logs["repmtl/cos_neg"] = neg[negative_mask(neg)[:, None, :].expand_as(neg)].mean()
        if ctx.logging and reg and ctx.z is not None and ctx.z.requires_grad:
            total = torch.stack(list(reg.values())).sum()
            logs["repmtl/reg_grad_ratio"] = _reg_grad_ratio(total, s, ctx.z)
        if distributed:
            reg, logs = _union_values(reg, logs)
        for name, value in reg.items():
            ctx.add_loss(name, value)
        for tag, value in logs.items():
            ctx.log(tag, value)


def _reg_grad_ratio(reg: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``‖∂(λ_tsr L_tsr + λ_csa L_csa)/∂Z‖ / ‖Σ_t ∂L_t/∂Z‖``: above 1 the regularisers, not the
    tasks, steer the encoder (as τ = 0.07 did). The task side is the saliency the step already
    holds; the regulariser side costs one extra backward through the saliency graph, taken only
    on logging steps and read on the device (no host sync)."""
    (g,) = torch.autograd.grad(reg, z, retain_graph=True, allow_unused=True)
    if g is None:  # heads whose input gradient does not depend on Z (e.g. linear heads, MSE on a constant)
        return torch.zeros((), device=z.device)
    ratio: torch.Tensor = g.norm() / s.detach().sum(1).norm().clamp_min(torch.finfo(s.dtype).tiny)
    return ratio


def _union_values(
    reg: dict[str, torch.Tensor], logs: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The union batch's values (one all-reduce), keeping each term's rank-local gradient.

    Each rank's terms are means over its own, equally many, samples, so their rank mean is the
    union's value; the gradient stays local (the trainer averages ``.grad`` over ranks), as the
    trainer does for task losses. Every rank calls this every step (``ctx.logging`` may differ).
    """
    values = list(reg.values()) + list(logs.values())
    mean = all_reduce_mean(torch.stack([v.detach() for v in values]))  # one dtype: the saliency's
    out = [m + (v - v.detach()) for m, v in zip(mean, values, strict=True)]
    return dict(zip(reg, out[: len(reg)], strict=True)), dict(zip(logs, out[len(reg) :], strict=True))
