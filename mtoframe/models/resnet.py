"""ResNets in plain PyTorch (no torchvision) and the heads LibMTL uses with them.

* :func:`build_resnet50_aspp`: dilated ResNet-50 encoder (layers 3 and 4 trade stride for
  dilation 2 and 4: output stride 8, ``Z`` is ``B×2048×H/8×W/8``) and one ASPP head per task,
  as LibMTL's NYUv2 / Cityscapes examples (their ``DeepLabHead``: ASPP with rates 12, 24, 36 and
  image pooling, projection to 256 with dropout 0.5, a 3×3 conv, a 1×1 classifier), the
  prediction upsampled bilinearly to the input size. That is the DeepLabV3 ASPP head; LibMTL does
  not use the V3+ low-level skip decoder and neither do we, so the count matches the 71.9M
  parameters LibMTL documents for NYUv2 with 3 tasks (13 + 1 + 3 output channels).
* :func:`build_resnet18_office`: ResNet-18 encoder, global average pooling, then LibMTL's Office
  hidden layer (Linear 512→512, BatchNorm, ReLU, dropout 0.5) and one linear classifier per
  domain.

ImageNet weights are not bundled (no torchvision): load a compatible ``state_dict`` into
``model.encoder.backbone`` yourself; the module names follow torchvision's ResNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import MultiTaskModel
from ._functional import unit_vectors, upsample_bilinear


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    """The ResNet trunk without pooling and classifier. ``dilate`` (per layer 2..4) replaces that
    layer's stride 2 by dilation, as torchvision's ``replace_stride_with_dilation`` (the first
    block of a dilated layer keeps the previous dilation, later blocks use the new one)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 dilate: Sequence[bool] = (False, False, False)) -> None:
        super().__init__()
        self.cin, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _bn(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(block, 64, layers[0])
        self.layer2 = self._layer(block, 128, layers[1], 2, dilate[0])
        self.layer3 = self._layer(block, 256, layers[2], 2, dilate[1])
        self.layer4 = self._layer(block, 512, layers[3], 2, dilate[2])
        self.out_channels = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1,
               dilate: bool = False) -> nn.Sequential:
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.cin != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.cin, planes * block.expansion, 1, stride, bias=False),
                                       _bn(planes * block.expansion))
        layers = [block(self.cin, planes, stride, previous, downsample)]
        self.cin = planes * block.expansion
        layers += [block(self.cin, planes, 1, self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out: Tensor = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return out


def resnet18() -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2))


def resnet50_dilated() -> ResNet:
    """Output stride 8 (layers 3 and 4 dilated by 2 and 4), as LibMTL's ``resnet_dilated``."""
    return ResNet(Bottleneck, (3, 4, 6, 3), dilate=(False, True, True))


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, dilation: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class _ImagePool(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): a 1×1 branch, one 3×3 branch per rate and an
    image-pooling branch, concatenated and projected to ``cout`` (dropout 0.5)."""

    def __init__(self, cin: int, rates: Sequence[int] = (12, 24, 36), cout: int = 256) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_ConvBNReLU(cin, cout, 1), *(_ConvBNReLU(cin, cout, 3, r) for r in rates),
                                       _ImagePool(cin, cout)])
        self.project = nn.Sequential(_ConvBNReLU(cout * (len(rates) + 2), cout, 1), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.project(torch.cat([b(x) for b in self.branches], 1))
        return out


class ASPPHead(nn.Module):
    """ASPP, a 3×3 conv (256), a 1×1 classifier, bilinear upsampling by ``scale`` (the encoder's
    output stride); ``normalize`` for unit surface normals."""

    def __init__(self, cin: int, cout: int, *, scale: int = 8, normalize: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(ASPP(cin), _ConvBNReLU(256, 256, 3), nn.Conv2d(256, cout, 1))
        self.scale, self.normalize = scale, normalize

    def forward(self, z: Tensor) -> Tensor:
        out = upsample_bilinear(self.net(z), self.scale, align_corners=True)
        return unit_vectors(out, dim=1) if self.normalize else out


class _Trunk(nn.Module):
    def __init__(self, backbone: ResNet, pool: bool = False, hidden: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.hidden = (nn.Sequential(nn.Linear(backbone.out_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                     nn.Dropout(0.5)) if hidden else None)

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.backbone(x)
        if self.pool:
            z = F.adaptive_avg_pool2d(z, 1).flatten(1)
        if self.hidden is not None:
            z = self.hidden(z)
        return z


def build_resnet50_aspp(*, num_classes: int, tasks: Sequence[str] = ("segmentation", "depth", "normal"),
                        out_channels: Mapping[str, int] | None = None) -> MultiTaskModel:
    """Dilated ResNet-50 + one ASPP head per task (LibMTL's NYUv2/Cityscapes architecture).
    ``out_channels`` defaults to ``segmentation: num_classes, depth: 1, normal: 3``."""
    outs = dict(out_channels or {"segmentation": num_classes, "depth": 1, "normal": 3})
    missing = [t for t in tasks if t not in outs]
    if missing:
        raise ValueError(f"no output channel count for task(s) {missing}; give out_channels={{task: channels}}")
    backbone = resnet50_dilated()
    heads = {t: ASPPHead(backbone.out_channels, outs[t], normalize=t == "normal") for t in tasks}
    return MultiTaskModel(encoder=_Trunk(backbone), heads=heads)


def build_resnet18_office(*, num_classes: int, tasks: Sequence[str], hidden: int | None = 512) -> MultiTaskModel:
    """ResNet-18 + pooled features (+ LibMTL's 512-unit hidden layer unless ``hidden=None``) and
    one linear classifier of ``num_classes`` per task (domain)."""
    backbone = resnet18()
    width = hidden or backbone.out_channels
    return MultiTaskModel(encoder=_Trunk(backbone, pool=True, hidden=hidden),
                          heads={t: nn.Linear(width, num_classes) for t in tasks})
