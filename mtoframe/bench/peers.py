"""Peer implementations timed beside mtoframe's: TorchJD's aggregators (``--peers torchjd``).

A TorchJD contender is the training step TorchJD's documentation prescribes for hard parameter
sharing: forward, ``autojac.mtl_backward(losses, features=Z)`` (Jacobian of the losses w.r.t.
the shared parameters, plain gradients for the heads), ``autojac.jac_to_grad(shared, A)``,
``optimizer.step()``. It runs on its own copy of the same model, the same batch and the same
optimiser settings as the mtoframe stacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import MtoError
from .timing import Contender
from .workloads import Workload

#: mtoframe method name -> (TorchJD class name, options copied from the mtoframe method when set)
TORCHJD_AGGREGATORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ew": ("Sum", ()),
    "mgda": ("MGDA", ()),
    "cagrad": ("CAGrad", ("c",)),
    "nashmtl": ("NashMTL", ("update_weights_every", "optim_niter", "max_norm")),
    "pcgrad": ("PCGrad", ()),
    "upgrad": ("UPGrad", ()),
    "imtlg": ("IMTLG", ()),
    "alignedmtl": ("AlignedMTL", ()),
    "gradvac": ("GradVac", ()),
    "fairgrad": ("FairGrad", ("alpha",)),
    "graddrop": ("GradDrop", ()),
}


#: METHODS.md defaults for TorchJD arguments that have no default there
REQUIRED_DEFAULTS: dict[str, dict[str, Any]] = {"CAGrad": {"c": 0.4}, "FairGrad": {"alpha": 2.0}}


def require_torchjd() -> Any:
    try:
        import torchjd  # noqa: F401
        from torchjd import aggregation, autojac
    except ImportError as exc:
        raise MtoError(
            "--peers torchjd needs TorchJD, which is not installed "
            f"({exc}); install it with: pip install 'torchjd[full]>=0.18'"
        ) from exc
    if not hasattr(autojac, "jac_to_grad"):
        raise MtoError("--peers torchjd needs torchjd>=0.18 (autojac.jac_to_grad); upgrade it")
    return aggregation


def torchjd_contenders(workload: Workload, method_names: list[str], *, lr: float,
                       make_optimizer: Callable[[Any, float], torch.optim.Optimizer],
                       options: dict[str, Any]) -> tuple[list[Contender], list[dict[str, Any]]]:
    """Contenders for every named method TorchJD also implements, and error records for those
    whose TorchJD aggregator could not be built (e.g. a missing optional solver)."""
    aggregation = require_torchjd()
    from torchjd import autojac

    # one fixed batch for every contender, so that they time the same work
    tasks = workload.tasks
    inputs, targets = workload.batch
    contenders, errors = [], []
    for name in method_names:
        if name not in TORCHJD_AGGREGATORS:
            continue
        cls_name, copied = TORCHJD_AGGREGATORS[name]
        kwargs = dict(REQUIRED_DEFAULTS.get(cls_name, {}))
        kwargs |= {k: options[name][k] for k in copied if k in options.get(name, {})}
        if cls_name == "NashMTL":
            kwargs["n_tasks"] = len(workload.tasks)
        label = f"torchjd:{name}"
        try:
            agg = getattr(aggregation, cls_name)(**kwargs)
        except (ImportError, TypeError, ValueError) as exc:
            errors.append({"stack": label, "kind": "torchjd", "error": f"{type(exc).__name__}: {exc}"})
            continue
        model = workload.fresh_model()
        opt = make_optimizer(model.parameters(), lr)
        shared = model.shared_parameters()

        def step(model: Any = model, opt: Any = opt, agg: Any = agg, shared: Any = shared) -> None:
            opt.zero_grad(set_to_none=True)
            z = model.encoder(inputs)
            losses = [t.loss(model.heads[t.name](z), targets[t.name]) for t in tasks]
            autojac.mtl_backward(losses, features=z)
            autojac.jac_to_grad(shared, agg)
            opt.step()

        contenders.append(Contender(label, step, kind="torchjd", info={"aggregator": repr(agg)}))
    return contenders, errors
