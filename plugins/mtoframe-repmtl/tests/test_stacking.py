"""Rep-MTL stacked with gradient and loss methods: the update is the other method's update of the
task gradients plus the regulariser's gradient (DESIGN §3), and the saliency is computed once."""

from __future__ import annotations

import attrs
import pytest
import torch

import mtoframe
from mtoframe import Method, Role, hookimpl
from mtoframe.gradients import GradientEngine
from mtoframe.method import SPACES
from mtoframe.options import one_of
from mtoframe_repmtl import RepMTL

COEFFS = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)


@attrs.frozen(kw_only=True)
class _FixedOptions:
    space: str = attrs.field(default="params", validator=one_of(SPACES))


class FixedWeights(Method):
    """Test aggregator: update Σ c_t g_t with fixed c, heads weighted by c."""

    name = "fixedweights"
    summary = "test aggregator"
    paper = "test"
    roles = Role.AGGREGATOR
    Options = _FixedOptions

    @hookimpl
    def on_shared_grads(self, ctx) -> None:
        c = COEFFS[ctx.task_ids].to(ctx.grads.dtype)
        ctx.set_update(c @ ctx.grads, head_weights=c)


@pytest.mark.parametrize("space", SPACES)
def test_regulariser_gradient_is_added_after_aggregation(
    space: str, monkeypatch: pytest.MonkeyPatch, hand
) -> None:
    calls = []
    original = GradientEngine.rep_grads

    def counting(self, ctx, *, differentiable):
        calls.append(differentiable)
        return original(self, ctx, differentiable=differentiable)

    monkeypatch.setattr(GradientEngine, "rep_grads", counting)
    model, batch = hand.conv_setup()
    got = hand.trainer_grads([RepMTL(), FixedWeights(space=space)], m := hand.clone(model), batch)
    assert calls == [True]  # one differentiable saliency, reused by the engine

    ref = hand.clone(model)
    z, losses, names = hand.hand_losses(ref, batch)
    params = list(ref.parameters())
    want = hand.grads_of((COEFFS * losses).sum(), params)  # Σ c_t g_t for the encoder, c_t-weighted heads
    reg = hand.grads_of(hand.hand_regulariser(z, losses), params)
    for n, g, w, r in zip([n for n, _ in m.named_parameters()], got, want, reg):
        torch.testing.assert_close(g, w + r, rtol=1e-10, atol=1e-13, msg=n)


@pytest.mark.parametrize("name", ["nashmtl", "cagrad", "famo", "dbmtl", "mgda", "pcgrad"])
def test_installed_methods_plus_repmtl(name: str, hand) -> None:
    if name not in mtoframe.available():
        pytest.skip(f"method {name!r} is not installed")
    model, batch = hand.conv_setup()
    alone = hand.trainer_grads([mtoframe.create(name)], hand.clone(model), batch)
    stacked = hand.trainer_grads([RepMTL(), mtoframe.create(name)], hand.clone(model), batch)
    ref = hand.clone(model)
    z, losses, _ = hand.hand_losses(ref, batch)
    reg = hand.grads_of(hand.hand_regulariser(z, losses), list(ref.parameters()))
    for s, a, r in zip(stacked, alone, reg):
        torch.testing.assert_close(s, a + r, rtol=1e-6, atol=1e-9)
