"""Small hard-parameter-sharing models for CPU benchmarks, and their tasks.

``build_scene_model``: a conv encoder that holds most of the FLOPs (stride 4 overall, so ``Z``
is ``B×4w×H/4×W/4``) and light heads (3×3 conv, 1×1 conv, bilinear upsampling back to the input
resolution). At ``width=32`` on 64×64 inputs the encoder is about 87% of the multiply-adds (192M of 221M per image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import Accuracy, Depth, MeanError, Normals, Segmentation
from ..model import MultiTaskModel, Task
from ._functional import unit_vectors, upsample_bilinear

SCENE_TASKS = ("segmentation", "depth", "normal")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(c, c), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class SceneHead(nn.Module):
    """3×3 conv + ReLU + 1×1 conv at the representation's resolution, then bilinear upsampling
    by ``scale``; ``normalize`` makes the output unit vectors (surface normals)."""

    def __init__(self, cin: int, cout: int, *, hidden: int, scale: int, normalize: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, hidden, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))
        self.scale, self.normalize = scale, normalize

    def forward(self, z: Tensor) -> Tensor:
        out = upsample_bilinear(self.net(z), self.scale, align_corners=False)
        return unit_vectors(out, dim=1) if self.normalize else out


def build_scene_model(*, num_classes: int, tasks: Sequence[str] = SCENE_TASKS, width: int = 32) -> MultiTaskModel:
    """The encoder-dominant HPS conv net for ``scenes`` (or any 3-channel dense tasks among
    ``segmentation`` (``num_classes`` logits), ``depth`` (1) and ``normal`` (3, unit))."""
    unknown = [t for t in tasks if t not in SCENE_TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {SCENE_TASKS}, got {list(tasks)}")
    w = width
    encoder = nn.Sequential(
        _conv(3, w), _conv(w, 2 * w, stride=2), _Residual(2 * w),
        _conv(2 * w, 4 * w, stride=2), _Residual(4 * w),
    )
    out = {"segmentation": num_classes, "depth": 1, "normal": 3}
    heads = {t: SceneHead(4 * w, out[t], hidden=w, scale=4, normalize=t == "normal") for t in tasks}
    return MultiTaskModel(encoder=encoder, heads=heads)


def segmentation_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Pixel-wise cross-entropy, label −1 ignored (LibMTL / MTAN)."""
    return F.cross_entropy(pred, target, ignore_index=-1)


# The two losses below select their valid pixels with ``torch.where``, not boolean indexing
# (``x[valid]``): indexing needs the count of valid pixels on the host (a device sync on CUDA every
# step) and its backward scatters into a zero tensor, a cost a saliency method pays twice (its
# second-order backward runs the scatter's own backward). The values equal the indexed form's up
# to the order of summation; a non-finite prediction at an invalid pixel is ignored either way.


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 on pixels with valid (non-zero) depth (LibMTL / MTAN)."""
    valid = target > 0
    return torch.where(valid, (pred - target).abs(), 0.0).sum() / valid.sum().clamp_min(1)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 − cos`` between (unit) predictions and targets on pixels with a non-zero target
    normal (LibMTL / MTAN; the head normalises its output)."""
    valid = (target != 0).any(1)
    cos = (pred * target).sum(1)
    return 1.0 - torch.where(valid, cos, 0.0).sum() / valid.sum().clamp_min(1)


def scene_tasks(num_classes: int, tasks: Sequence[str] = SCENE_TASKS) -> list[Task]:
    """The ``scenes`` / NYUv2 tasks with their losses and metrics (fresh metric objects)."""
    made = {
        "segmentation": lambda: Task("segmentation", loss=segmentation_loss, metrics=[Segmentation(num_classes)]),
        "depth": lambda: Task("depth", loss=depth_loss, metrics=[Depth()]),
        "normal": lambda: Task("normal", loss=normal_loss, metrics=[Normals()]),
    }
    return [made[t]() for t in tasks]


def build_manytask_model(*, tasks: int, d_in: int = 32, d_rep: int = 64) -> MultiTaskModel:
    """An MLP encoder (``d_in → 128 → d_rep``, ReLU) and one small tower per task (``d_rep → 16
    → 1``), as the MMoE paper's shared-bottom baseline; tasks are named ``t0 … t{T−1}``."""
    encoder = nn.Sequential(nn.Linear(d_in, 128), nn.ReLU(), nn.Linear(128, d_rep), nn.ReLU())
    heads = {f"t{i}": nn.Sequential(nn.Linear(d_rep, 16), nn.ReLU(), nn.Linear(16, 1)) for i in range(tasks)}
    return MultiTaskModel(encoder=encoder, heads=heads)


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred, target)


def manytask_tasks(tasks: int) -> list[Task]:
    """MSE loss and MAE metric per task ``t0 … t{T−1}``."""
    return [Task(f"t{i}", loss=mse_loss, metrics=[MeanError("mae")]) for i in range(tasks)]


def count_macs(model: MultiTaskModel, x: Tensor) -> dict[str, int]:
    """Multiply-adds of each conv/linear layer of the encoder and of each head on input ``x``
    (one sample), from forward hooks; for documenting where the FLOPs are."""
    totals: dict[str, int] = {}

    def hook(key: str) -> Callable[[nn.Conv2d | nn.Linear, tuple[Tensor, ...], Tensor], None]:
        def f(mod: nn.Conv2d | nn.Linear, inp: tuple[Tensor, ...], out: Tensor) -> None:
            if isinstance(mod, nn.Conv2d):
                macs = out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            else:
                macs = out[0].numel() * mod.in_features
            totals[key] = totals.get(key, 0) + macs
        return f

    handles = []
    for key, part in [("encoder", model.encoder), *((f"head/{k}", h) for k, h in model.heads.items())]:
        for m in part.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                handles.append(m.register_forward_hook(hook(key)))
    try:
        with torch.no_grad():
            model.eval()
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return totals


def build_multilenet(*, tasks: Sequence[str] = ("left", "right"), num_classes: int = 10,
                     dropout: float = 0.5) -> MultiTaskModel:
    """Multi-LeNet for MultiMNIST (Sener & Koltun 2018, https://arxiv.org/abs/1810.04650, after
    their MultiMNIST code): the shared encoder is LeNet's conv part and first dense layer
    (``conv5×5 1→10``, max-pool, ReLU, ``conv5×5 10→20``, 2-D dropout, max-pool, ReLU,
    ``320→50``, ReLU), so ``Z`` is ``B×50``; each task's head is ``50→50``, ReLU, dropout,
    ``50→num_classes`` (logits). Input: ``B×1×28×28``."""
    if not tasks:
        raise ValueError("tasks must be a non-empty sequence of task names")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    encoder = nn.Sequential(
        nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
    )
    heads = {t: nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Dropout(dropout), nn.Linear(50, num_classes))
             for t in tasks}
    return MultiTaskModel(encoder=encoder, heads=heads)


def classification_loss(pred: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(pred, target)


def multimnist_tasks(tasks: Sequence[str] = ("left", "right")) -> list[Task]:
    """Cross-entropy loss and accuracy (higher is better) per MultiMNIST task."""
    return [Task(t, loss=classification_loss, metrics=[Accuracy()]) for t in tasks]
