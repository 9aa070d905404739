"""Loss-level methods with gradient methods (DESIGN §3 stacking rule)."""

import copy

import pytest
import torch
from lossweighting_helpers import Identity

import mtoframe
from mtoframe import Method, Role, hookimpl
from mtoframe.errors import StackError
from mtoframe.testing import make_batch, make_trainer, make_vector_model
from mtoframe_lossweighting import DWA, GLS, IMTLL, RLW, SI, STCH, UW, GradNorm

FACTORIES = {
    "uw": lambda: UW(),
    "imtll": lambda: IMTLL(),
    "gls": lambda: GLS(),
    "si": lambda: SI(),
    "rlw": lambda: RLW(seed=5),
    "dwa": lambda: DWA(),
    "stch": lambda: STCH(),
    "gradnorm": lambda: GradNorm(initial_losses="first_step"),
}


class Aggregator(Method):
    roles = Role.AGGREGATOR

    @hookimpl
    def on_shared_grads(self, ctx):
        ctx.set_update(ctx.grads.sum(0))


class Nash(Aggregator):
    name = "scaleinvariant"
    ignores_loss_weights = "its update is invariant to rescaling each task's gradient"


class CAGradLike(Aggregator):
    name = "cagradlike"


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_per_task_path_equals_single_backward(name):
    """With an identity transform the loss-level weighting reaches the parameters exactly as in
    the one-backward path: rows are the weighted tasks' gradients."""
    model = make_vector_model()
    other = copy.deepcopy(model)
    batches = [make_batch(model, seed=s) for s in (1, 2)]
    a = make_trainer([FACTORIES[name]()], model=model, lr=0.05)
    b = make_trainer([FACTORIES[name](), Identity(), CAGradLike()], model=other, lr=0.05)
    for k in range(3):
        a.step(batches[k % 2])
        b.step(batches[k % 2])
    for p, q in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_meaningless_stacks_rejected_with_reason(name):
    with pytest.raises(StackError, match="invariant to rescaling"):
        make_trainer([FACTORIES[name](), Nash()])
    second = "si" if name != "si" else "gls"
    with pytest.raises(StackError, match="two loss-weighting schemes"):
        make_trainer([FACTORIES[name](), FACTORIES[second]()])


def test_with_pcgrad_when_installed():
    if "pcgrad" not in mtoframe.available():
        pytest.skip("mtoframe-gradmethods (pcgrad) is not installed")
    model = make_vector_model()
    plain = copy.deepcopy(model)
    batch = make_batch(model)
    spy = Identity()
    make_trainer([GLS(), spy, "pcgrad"], model=model).step(batch)
    make_trainer([GLS(), "pcgrad"], model=plain).step(batch)
    for p, q in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q)
    # the rows PCGrad projected are GLS-weighted: their sum is the GLS gradient of the encoder
    ref = copy.deepcopy(make_vector_model())
    x, y = batch
    preds = ref(x)
    losses = torch.stack([((preds[t] - y[t]) ** 2).mean() for t in "abc"])
    gs = torch.autograd.grad(losses.prod() ** (1 / 3), ref.shared_parameters())
    torch.testing.assert_close(spy.rows.sum(0), torch.cat([g.reshape(-1) for g in gs]))
