"""Reference models: shapes, where the FLOPs are, losses on hand-made cases, parameter counts,
and that the three scene tasks are learnable."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtoframe import Trainer
from mtoframe.data import NUM_CLASSES, generate_scenes
from mtoframe.models import build_manytask_model, build_scene_model, manytask_tasks, scene_tasks
from mtoframe.models.hps import count_macs, depth_loss, normal_loss, segmentation_loss
from mtoframe.models.resnet import build_resnet18_office, build_resnet50_aspp


pytestmark = pytest.mark.usefixtures("one_thread")


def test_scene_model_shapes_and_encoder_dominates():
    model = build_scene_model(num_classes=NUM_CLASSES, width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert out["segmentation"].shape == (2, NUM_CLASSES, 32, 32)
    assert out["depth"].shape == (2, 1, 32, 32) and out["normal"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, 32, 32))
    assert model.encoder(x).shape == (2, 32, 8, 8)  # Z: 4·width channels at stride 4
    macs = count_macs(build_scene_model(num_classes=NUM_CLASSES), torch.rand(1, 3, 32, 32))
    heads = sum(v for k, v in macs.items() if k.startswith("head/"))
    assert macs["encoder"] / (macs["encoder"] + heads) > 0.8


def test_losses_on_hand_made_cases():
    logits = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 3, 3))
    target[0, 0, :] = -1
    valid = target >= 0
    by_hand = -torch.log_softmax(logits, 1).permute(0, 2, 3, 1)[valid].gather(1, target[valid][:, None]).mean()
    torch.testing.assert_close(segmentation_loss(logits, target), by_hand)

    depth = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]], dtype=torch.float64)
    pred = torch.tensor([[[[1.5, 1.0], [9.0, 4.0]]]], dtype=torch.float64)
    torch.testing.assert_close(depth_loss(pred, depth), torch.tensor((0.5 + 1.0 + 0.0) / 3, dtype=torch.float64))

    n = F.normalize(torch.randn(1, 3, 2, 2, dtype=torch.float64), dim=1)
    target = n.clone()
    target[..., 0, 0] = 0.0  # invalid pixel: ignored whatever is predicted there
    pred = n.clone()
    pred[..., 0, 0] = -n[..., 0, 0]
    torch.testing.assert_close(normal_loss(pred, target), torch.tensor(0.0, dtype=torch.float64))
    pred[..., 1, 1] = -n[..., 1, 1]  # one of three valid pixels opposite: 1 − (1 + 1 − 1)/3
    torch.testing.assert_close(normal_loss(pred, target), torch.tensor(2 / 3, dtype=torch.float64))


def test_depth_and_normal_losses_ignore_invalid_pixels_in_value_and_gradients():
    # a non-finite prediction where the target is invalid changes neither the loss nor any
    # gradient (first or second order, as a saliency method takes them), and the values equal
    # the mean over the valid pixels written out
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) + 0.5
    depth[0, 0, :2] = 0.0
    pred = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 3
    normal = F.normalize(torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), dim=1)
    normal[1, :, 1:3, 1:3] = 0.0
    npred = F.normalize(torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), dim=1)
    cases = [(depth_loss, pred, depth, depth > 0), (normal_loss, npred, normal, (normal != 0).any(1, keepdim=True))]
    for loss, p, target, valid in cases:
        by_hand = (p - target).abs()[valid.expand_as(p)].mean() if loss is depth_loss else \
            1 - (p * target).sum(1, keepdim=True)[valid].mean()
        torch.testing.assert_close(loss(p, target), by_hand)
        bad = p.detach().clone().masked_fill_(~valid.expand_as(p), float("nan")).requires_grad_(True)
        good = p.detach().clone().requires_grad_(True)
        for x in (bad, good):
            (s,) = torch.autograd.grad(loss(x, target), x, create_graph=True)
            (s.square().sum() + loss(x, target)).backward()
        torch.testing.assert_close(loss(bad, target), loss(good, target), rtol=0, atol=0)
        torch.testing.assert_close(bad.grad, good.grad, rtol=0, atol=0)
        assert torch.isfinite(bad.grad).all() and (bad.grad[~valid.expand_as(p)] == 0).all()
    assert torch.autograd.gradgradcheck(lambda x: depth_loss(x, depth), (pred.clone().requires_grad_(True),))
    assert torch.autograd.gradgradcheck(lambda x: normal_loss(x, normal), (npred.clone().requires_grad_(True),))


def test_unit_vectors_equal_f_normalize_to_second_order():
    # the heads' normalisation: F.normalize's values, gradients and second derivatives, including
    # vectors whose norm is below the floor (1e-12); at the zero vector F.normalize's second
    # derivative is NaN (vector_norm's double backward) where unit_vectors' is finite
    from mtoframe.models._functional import unit_vectors

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    x[0, :, 0, 0] = 0.0
    x[1, :, 2, 3] = torch.tensor([3e-13, -2e-13, 1e-13], dtype=torch.float64)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    outs = []
    for f in (lambda t: F.normalize(t, dim=1), unit_vectors):
        t = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((f(t) * w).sum(), t, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), t)
        outs.append((f(t).detach(), g.detach(), gg))
    zero = (x == 0).all(1, keepdim=True).expand_as(x)
    assert outs[0][2][zero].isnan().all() and torch.isfinite(outs[1][2]).all()
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got[~zero], want[~zero], rtol=1e-12, atol=1e-12)
        # at the zero vector the first derivative is w / ε (order 1e12): equal up to rounding
        torch.testing.assert_close(got[zero], torch.nan_to_num(want[zero], nan=0.0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("shape", "scale"), [((2, 3, 5, 7), 3), ((1, 2, 16, 16), 4), ((2, 1, 1, 4), 2),
                                              ((3, 4, 6, 6), 1), ((2, 2, 8, 3), 8)])
def test_upsample_bilinear_equals_f_interpolate_in_value_and_gradient(shape, scale, align_corners):
    # the heads' up-sampling: two products with interpolation matrices, F.interpolate's values and
    # (the map being linear) its adjoint, on odd, non-square and one-pixel inputs
    from mtoframe.models._functional import upsample_bilinear

    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*shape[:-2], shape[-2] * scale, shape[-1] * scale, generator=g, dtype=torch.float64)
    got = upsample_bilinear(x, scale, align_corners=align_corners)
    want = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    (g_got,) = torch.autograd.grad((got * w).sum(), x)
    (g_want,) = torch.autograd.grad((want * w).sum(), x)
    torch.testing.assert_close(g_got, g_want, rtol=1e-13, atol=1e-13)


def test_upsample_bilinear_matrices_made_in_inference_mode_train_later():
    from mtoframe.models._functional import upsample_bilinear

    with torch.inference_mode():  # the first call of this size (evaluation before any training step)
        upsample_bilinear(torch.ones(1, 1, 11, 13), 2, align_corners=False)
    x = torch.ones(1, 1, 11, 13, requires_grad=True)
    upsample_bilinear(x, 2, align_corners=False).sum().backward()
    assert x.grad is not None and x.grad.sum().item() == pytest.approx(4 * 11 * 13)  # each row of A sums to 1
    with pytest.raises(ValueError, match="scale must be a positive integer, got 1.5"):
        upsample_bilinear(x, 1.5, align_corners=False)  # type: ignore[arg-type]


def test_scene_tasks_metrics_are_fresh_objects():
    a, b = scene_tasks(NUM_CLASSES), scene_tasks(NUM_CLASSES)
    assert [t.name for t in a] == ["segmentation", "depth", "normal"]
    assert a[0].metrics[0] is not b[0].metrics[0]


@pytest.mark.parametrize("task", ["segmentation", "depth", "normal"])
def test_each_scene_task_is_learnable(task):
    """A few Adam steps on a fixed tiny batch of scenes lower the task's loss clearly."""
    torch.manual_seed(0)
    s = generate_scenes(4, size=16, seed=7)
    x = torch.from_numpy(s["image"])
    key = {"segmentation": "label", "depth": "depth", "normal": "normal"}[task]
    batch = (x, {task: torch.from_numpy(s[key])})
    model = build_scene_model(num_classes=NUM_CLASSES, tasks=(task,), width=4)
    trainer = Trainer(model, scene_tasks(NUM_CLASSES, (task,)), optimizer=torch.optim.Adam(model.parameters(), 1e-2))
    first = trainer.step(batch).raw_losses.item()
    for _ in range(20):
        last = trainer.step(batch).raw_losses.item()
    assert math.isfinite(last) and last < 0.7 * first


def test_manytask_model_and_tasks():
    model = build_manytask_model(tasks=5, d_in=6, d_rep=4)
    out = model(torch.randn(3, 6))
    assert sorted(out) == [f"t{i}" for i in range(5)] and all(v.shape == (3, 1) for v in out.values())
    assert model.encoder(torch.randn(3, 6)).shape == (3, 4)
    assert [t.name for t in manytask_tasks(5)] == sorted(out)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet50_aspp_matches_the_libmtl_parameter_count():
    """LibMTL documents 71.9M parameters for HPS on NYUv2 (dilated ResNet-50 + three ASPP heads
    with 13, 1 and 3 outputs). Built on the meta device: no memory, no init cost."""
    with torch.device("meta"):
        model = build_resnet50_aspp(num_classes=13)
        encoder = _count(model.encoder)
        assert encoder == 23_508_032  # torchvision's ResNet-50 without its fc layer
        # per head: ASPP (1×1, three 3×3 at 2048→256, pooled 1×1, 1280→256 projection, six BNs),
        # a 3×3 256→256 conv + BN, then the 256→k classifier
        aspp = 2048 * 256 * (1 + 9 * 3 + 1) + 1280 * 256 + 6 * 512
        per_head = aspp + 256 * 256 * 9 + 512
        assert _count(model) == encoder + sum(per_head + 256 * k + k for k in (13, 1, 3))
        assert abs(_count(model) / 1e6 - 71.9) < 0.05


def test_resnet50_is_dilated_to_output_stride_8_and_heads_restore_the_input_size():
    from mtoframe.models.resnet import ASPPHead, resnet50_dilated

    trunk = resnet50_dilated().eval()
    head = ASPPHead(16, 3, normalize=True).eval()  # a narrow input keeps the test light
    with torch.no_grad():
        assert trunk(torch.rand(1, 3, 32, 48)).shape == (1, 2048, 4, 6)
        out = head(torch.rand(1, 16, 4, 6))
    assert out.shape == (1, 3, 32, 48)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1, 32, 48))


def test_resnet18_office():
    with torch.device("meta"):
        office = build_resnet18_office(num_classes=31, tasks=("amazon", "dslr", "webcam"))
        assert _count(office.encoder.backbone) == 11_176_512  # torchvision's ResNet-18 without fc
    office = build_resnet18_office(num_classes=5, tasks=("a", "b"), hidden=None).eval()
    with torch.no_grad():
        assert office(torch.rand(2, 3, 32, 32))["b"].shape == (2, 5)
