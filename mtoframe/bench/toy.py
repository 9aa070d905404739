"""The two-task toy of the CAGrad, Nash-MTL and FAMO papers (METHODS.md, "the two-task toy").

θ = (x1, x2); the losses and their gradients are written out analytically here (numpy, float64)
so that every method runs vectorised over all starts and all methods at once: one step of the
whole benchmark is a handful of array operations. Where a method's 2-task update has an exact
closed form (EW, MGDA, PCGrad, UPGrad, CAGrad, Nash-MTL, FAMO, RLW) the toy uses it, with the
options of the installed plugin (tests check each form against ``mtoframe.aggregate`` on the
plugin); any other installed parameter-space gradient method runs through
``mtoframe.aggregate`` on the 2×2 problem of each start (slower, same maths by construction).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

LOW = 5e-6
#: x2 of the Pareto set (x1 in [-7, 7]); the exact value varies slightly with x1
PARETO_X2 = -8.3552
PARETO_X1 = (-7.0, 7.0)


# -- the problem -------------------------------------------------------------------------------


def toy_losses_and_grads(x: np.ndarray, scale: Sequence[float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Losses ``[..., 2]`` and gradients ``[..., 2 (task), 2 (x1, x2)]`` at ``x[..., 2]``."""
    x1, x2 = x[..., 0], x[..., 1]
    th = np.tanh(-x2)
    dth = -(1.0 - th**2)  # d tanh(-x2) / dx2
    a1 = 0.5 * (-x1 - 7.0) - th
    a2 = 0.5 * (-x1 + 3.0) + th + 2.0
    # torch.clamp(|a|, low), as the reference code: the gradient passes where |a| >= low
    live1, live2 = np.abs(a1) >= LOW, np.abs(a2) >= LOW
    f1 = np.log(np.maximum(np.abs(a1), LOW)) + 6.0
    f2 = np.log(np.maximum(np.abs(a2), LOW)) + 6.0
    # d log|a| = da / a, zero where the max(., low) floor is active
    inv1 = np.where(live1, 1.0 / np.where(live1, a1, 1.0), 0.0)
    inv2 = np.where(live2, 1.0 / np.where(live2, a2, 1.0), 0.0)
    df1 = np.stack([-0.5 * inv1, -dth * inv1], -1)
    df2 = np.stack([-0.5 * inv2, dth * inv2], -1)
    g1 = ((-x1 + 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    g2 = ((-x1 - 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    dg1 = np.stack([(x1 - 7.0) / 5.0, (x2 + 8.0) / 50.0], -1)
    dg2 = np.stack([(x1 + 7.0) / 5.0, (x2 + 8.0) / 50.0], -1)
    t = np.tanh(0.5 * x2)
    sech2 = 1.0 - t**2
    c1, c2 = np.maximum(t, 0.0), np.maximum(-t, 0.0)
    zero = np.zeros_like(x1)
    # The reference code gates with torch.clamp(tanh(±x2/2), 0), whose gradient passes where the
    # input is >= 0: at the tie x2 = 0 both gates pass their full gradient (torch.max would
    # split it in half). That gradient is what moves the (0, 0) start at all.
    share1 = np.where(t >= 0, 1.0, 0.0)
    share2 = np.where(t <= 0, 1.0, 0.0)
    dc1 = np.stack([zero, share1 * 0.5 * sech2], -1)
    dc2 = np.stack([zero, -share2 * 0.5 * sech2], -1)
    l1 = c1 * f1 + c2 * g1
    l2 = c1 * f2 + c2 * g2
    d1 = c1[..., None] * df1 + f1[..., None] * dc1 + c2[..., None] * dg1 + g1[..., None] * dc2
    d2 = c1[..., None] * df2 + f2[..., None] * dc1 + c2[..., None] * dg2 + g2[..., None] * dc2
    s = np.asarray(scale, dtype=np.float64)
    return np.stack([l1, l2], -1) * s, np.stack([d1, d2], -2) * s[:, None]


def on_front(x: np.ndarray, *, tol: float = 0.25) -> np.ndarray:
    """Whether points lie on the Pareto set: x1 in [-7, 7] (±0.05) and |x2 - (-8.3552)| < tol
    (the tolerance covers the set's slight bend, whose x2 reaches about -8.47 at x1 = ±7)."""
    return (np.abs(x[..., 1] - PARETO_X2) < tol) & (x[..., 0] >= PARETO_X1[0] - 0.05) & (x[..., 0] <= PARETO_X1[1] + 0.05)


# -- protocols -----------------------------------------------------------------------------------


@attrs.frozen
class Protocol:
    name: str
    title: str
    scale: tuple[float, float]
    starts: tuple[tuple[float, float], ...]
    steps: int
    lr: float = 1e-3
    #: per-method option overrides (the papers' toy settings)
    overrides: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    #: per-method step budgets that differ from ``steps``
    method_steps: Mapping[str, int] = attrs.field(factory=dict)


PROTOCOLS = {
    "a": Protocol("a", "(a) CAGrad protocol: unscaled losses, 100k Adam steps", (1.0, 1.0),
                  ((-8.5, 7.5), (-8.5, 5.0), (0.0, 0.0), (9.0, 9.0), (10.0, -8.0)), 100_000,
                  overrides={"cagrad": {"c": 0.5}, "famo": {"gamma": 0.0}}),
    # CAGrad in (b) as the Nash-MTL/FAMO toy code runs it: c = 0.4, update multiplied by T, then
    # its norm clipped to 1 (their CAGrad clips after writing the update)
    "b": Protocol("b", "(b) Nash-MTL/FAMO protocol: loss 1 scaled by 0.1, 35k Adam steps (FAMO 50k)", (0.1, 1.0),
                  ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)), 35_000,
                  overrides={"cagrad": {"scale_by_tasks": True, "max_norm": 1.0}, "famo": {"gamma": 0.0}},
                  method_steps={"famo": 50_000}),
}


# -- 2-task closed forms ---------------------------------------------------------------------------
# Each factory gets the method's options (a dict) and returns step(G[S,2,P], L[S,2]) -> d[S,P];
# ``after(L_new)`` (optional) sees the losses after the step (FAMO).

Direction = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1)


def _clip(d: np.ndarray, max_norm: float) -> np.ndarray:
    """Each row of ``d`` clipped to ``max_norm`` with ``clip_grad_norm_``'s coefficient (0: off)."""
    if max_norm <= 0:
        return d
    return d * np.minimum(1.0, max_norm / (np.sqrt(_dot(d, d))[:, None] + 1e-6))


def ew_form(opts: Mapping[str, Any], n: int, rng: np.random.Generator) -> Direction:
    return lambda G, L: G.sum(1)


def mgda_weights(G: np.ndarray) -> np.ndarray:
    """Min-norm point of the segment [g1, g2]: weight of g1 (w1) for each start."""
    g1, g2 = G[:, 0], G[:, 1]
    diff = g1 - g2
    den = _dot(diff, diff)
    w = np.where(den > 0, _dot(g2 - g1, g2) / np.where(den > 0, den, 1.0), 0.5)
    return np.clip(w, 0.0, 1.0)


def mgda_form(opts: Mapping[str, Any], n: int, rng: np.random.Generator) -> Direction | None:
    if opts.get("normalization", "none") != "none":
        return None  # the closed form covers normalization='none'; others go through aggregate()

    def step(G: np.ndarray, L: np.ndarray) -> np.ndarray:
        w = mgda_weights(G)[:, None]
        return w * G[:, 0] + (1 - w) * G[:, 1]

    return step


def _project_conflicts(G: np.ndarray) -> np.ndarray:
    """Each row projected off the other when they conflict (2-task PCGrad / UPGrad)."""
    g1, g2 = G[:, 0], G[:, 1]
    d12 = _dot(g1, g2)[:, None]
    n1, n2 = _dot(g1, g1)[:, None], _dot(g2, g2)[:, None]
    c = d12 < 0
    p1 = np.where(c, g1 - d12 / np.where(n2 > 0, n2, 1.0) * g2, g1)
    p2 = np.where(c, g2 - d12 / np.where(n1 > 0, n1, 1.0) * g1, g2)
    return np.stack([p1, p2], 1)


def pcgrad_form(opts: Mapping[str, Any], n: int, rng: np.random.Generator) -> Direction:
    # With two tasks the random order is irrelevant: each row meets the other, unmodified, once.
    k = 0.5 if opts.get("reduction", "sum") == "mean" else 1.0
    return lambda G, L: k * _project_conflicts(G).sum(1)


def upgrad_form(opts: Mapping[str, Any], n: int, rng: np.random.Generator) -> Direction:
    # Projection of g_i onto the dual cone {v: v·g_j >= 0}: with two rows only the other
    # row's half-space can be violated, and its projection keeps v·g_i >= 0 (Cauchy-Schwarz).
    return lambda G, L: _project_conflicts(G).mean(1)


def cagrad_form(opts: Mapping[str, Any], n: int, rng: np.random.Generator) -> Direction:
    """``w* = argmin_{w∈simplex} g_wᵀg0 + c‖g0‖‖g_w‖`` with ``w = (x, 1−x)``: the objective is
    ``k·sqrt(q(x)) + s·x + const`` with q quadratic, so its stationary point solves a quadratic
    equation; the minimum over [0, 1] is the best of it and the two ends."""
    c = float(opts.get("c", 0.4))
    rescale = int(opts.get("rescale", 1))
    by_tasks = bool(opts.get("scale_by_tasks", False))
    max_norm = float(opts.get("max_norm", 0.0))

    def step(G: np.ndarray, L: np.ndarray) -> np.ndarray:
        g1, g2 = G[:, 0], G[:, 1]
        g0 = 0.5 * (g1 + g2)
        k = c * np.sqrt(_dot(g0, g0))
        u = g1 - g2  # g_w = g2 + x u
        a, b, e = _dot(u, u), _dot(g2, u), _dot(g2, g2)
        s = _dot(u, g0)

        def obj(x: np.ndarray) -> np.ndarray:
            return k * np.sqrt(np.maximum(a * x * x + 2 * b * x + e, 0.0)) + s * x

        m = np.maximum(a * e - b * b, 0.0)  # Gram determinant: q = ((a x + b)² + m) / a
        cands = [np.zeros_like(a), np.ones_like(a)]
        ok = (a > 0) & (k * k * a > s * s)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = -np.sign(s) * np.sqrt(np.where(ok, s * s * m / np.where(ok, k * k * a - s * s, 1.0), 0.0))
            x_int = np.where(ok, (r - b) / np.where(a > 0, a, 1.0), 0.0)
        cands.append(np.clip(x_int, 0.0, 1.0))
        vals = np.stack([obj(x) for x in cands], 0)
        x = np.stack(cands, 0)[np.argmin(vals, 0), np.arange(len(a))]
        gw = g2 + x[:, None] * u
        nw = np.sqrt(_dot(gw, gw))[:, None]
        d = g0 + np.where(nw > 0, k[:, None] / np.where(nw > 0, nw, 1.0), 0.0) * gw
        d = d / {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
        return _clip(d * 2.0 if by_tasks else d, max_norm)

    return step


def nashmtl_form(opts: Mapping[str, Any], n: int, rng: np.random.Generator) -> Direction:
    """``α_t = 1 / (‖g_t‖ sqrt(1 + cos(g_1, g_2)))``, re-solved every ``update_weights_every``
    calls, then the update is clipped to ``max_norm``."""
    every = int(opts.get("update_weights_every", 1))
    max_norm = float(opts.get("max_norm", 1.0))
    state = {"calls": 0, "alpha": np.ones((n, 2))}

    def step(G: np.ndarray, L: np.ndarray) -> np.ndarray:
        if state["calls"] % every == 0:
            norms = np.sqrt(_dot(G, G))  # [S, 2]
            cos = _dot(G[:, 0], G[:, 1]) / np.maximum(norms[:, 0] * norms[:, 1], 1e-300)
            ok = (norms > 0).all(1) & (cos > -1 + 1e-12)
            alpha = 1.0 / (np.maximum(norms, 1e-300) * np.sqrt(np.maximum(1 + cos, 1e-300))[:, None])
            state["alpha"] = np.where(ok[:, None], alpha, state["alpha"])
        state["calls"] += 1
        return _clip((state["alpha"][:, :, None] * G).sum(1), max_norm)

    return step


def rlw_form(opts: Mapping[str, Any], n: int, rng: np.random.Generator) -> Direction:
    def step(G: np.ndarray, L: np.ndarray) -> np.ndarray:
        z = rng.standard_normal((n, 2))
        w = np.exp(z - z.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        return (w[:, :, None] * G).sum(1)

    return step


class FamoForm:
    """FAMO with logits per start; ``after`` applies the logit update once the post-step losses
    are known (the toy evaluates them at the next step, which is the same point)."""

    def __init__(self, opts: Mapping[str, Any], n: int, rng: np.random.Generator, scale: Sequence[float]) -> None:
        self.lr, self.gamma = float(opts.get("w_lr", 0.025)), float(opts.get("gamma", 0.0))
        mins = opts.get("min_losses")
        # The FAMO toy's loss floor is -21 per unit scale (its losses go below -20).
        self.min = np.asarray(mins if isinstance(mins, (tuple, list)) else [-21.0 * s for s in scale], dtype=np.float64)
        self.xi = np.zeros((n, 2))
        self.m, self.v, self.t = np.zeros((n, 2)), np.zeros((n, 2)), 0
        self.prev: np.ndarray | None = None
        self.z = np.full((n, 2), 0.5)

    def __call__(self, G: np.ndarray, L: np.ndarray) -> np.ndarray:
        e = np.exp(self.xi - self.xi.max(1, keepdims=True))
        self.z = e / e.sum(1, keepdims=True)
        D = L - self.min + 1e-8
        c = 1.0 / (self.z / D).sum(1, keepdims=True)
        self.prev = D
        return ((c * self.z / D)[:, :, None] * G).sum(1)

    def after(self, L_new: np.ndarray) -> None:
        if self.prev is None:
            return
        delta = np.log(self.prev) - np.log(L_new - self.min + 1e-8)
        z = self.z
        grad = z * delta - z * (z * delta).sum(1, keepdims=True)  # (diag(z) − zzᵀ) δ
        grad = grad + self.gamma * self.xi  # torch Adam's weight_decay (L2 into the gradient)
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        mh, vh = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        self.xi = self.xi - self.lr * mh / (np.sqrt(vh) + 1e-8)


CLOSED_FORMS: dict[str, Callable[..., Any]] = {
    "ew": ew_form, "mgda": mgda_form, "pcgrad": pcgrad_form, "upgrad": upgrad_form, "cagrad": cagrad_form,
    "nashmtl": nashmtl_form, "rlw": rlw_form,
}


class AggregateForm:
    """Any parameter-space gradient method, through ``mtoframe.aggregate`` on each start's 2×2
    problem (one method object per start, so stateful methods keep separate state)."""

    def __init__(self, name: str, opts: Mapping[str, Any], n: int) -> None:
        from .. import create

        self.methods = [create(name, **opts) for _ in range(n)]

    def __call__(self, G: np.ndarray, L: np.ndarray) -> np.ndarray:
        import torch

        from .. import aggregate

        Gt, Lt = torch.from_numpy(G), torch.from_numpy(L)
        return np.stack([aggregate(m, Gt[i], Lt[i]).numpy() for i, m in enumerate(self.methods)])


# -- which methods run ------------------------------------------------------------------------------


def plan(names: Sequence[str], *, generic: bool = True) -> tuple[list[str], dict[str, str]]:
    """The methods the toy can run and, for the others, why not. ``generic=False`` leaves out
    methods without a closed form (they cost one ``mtoframe.aggregate`` call per start and step)."""
    from ..method import GRADIENT_ROLES, Role
    from ..registry import get_registry

    reg = get_registry()
    run, skipped = [], {}
    for n in names:
        if n in CLOSED_FORMS or n == "famo":
            run.append(n)
            continue
        cls = reg.get(n).cls
        m = cls()
        if m.rep_grads != "none":
            skipped[n] = "needs a representation (saliency); the toy has none"
        elif m.roles & GRADIENT_ROLES and m.grad_space == "params" and not m.roles & Role.LOSS:
            if generic:
                run.append(n)
            else:
                skipped[n] = ("no 2-task closed form in the toy; name it with --methods to run it through "
                              "mtoframe.aggregate (one call per start and step: minutes per 10k steps)")
        elif m.roles & GRADIENT_ROLES:
            skipped[n] = f"gradient method in {m.grad_space!r} space or with a loss role; the toy has parameters only"
        else:
            skipped[n] = "loss-level method without a 2-task form in the toy (it needs a trainer's step and epochs)"
    return run, skipped


def method_options(name: str, protocol: Protocol) -> dict[str, Any]:
    """The installed method's defaults with the protocol's overrides (defaults of METHODS.md
    when the method is not installed)."""
    from ..api import available, create

    opts: dict[str, Any] = {}
    if name in available():
        o = create(name).options
        opts = {a.name: getattr(o, a.name) for a in attrs.fields(type(o))}
    opts.update(protocol.overrides.get(name, {}))
    return opts


def run_protocol(protocol: Protocol, methods: Sequence[str], *, steps: int | None = None, record_every: int | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Run every method from every start with Adam(lr) on θ; all methods and starts advance in
    one array. ``steps`` overrides the budgets (scaled proportionally for per-method budgets)."""
    S, M = len(protocol.starts), len(methods)
    budget = {m: protocol.method_steps.get(m, protocol.steps) for m in methods}
    if steps is not None:
        budget = {m: max(1, round(b * steps / protocol.steps)) for m, b in budget.items()}
    total = max(budget.values())
    every = record_every or max(1, total // 400)
    rng = np.random.default_rng(seed)
    forms: list[Any] = []
    impl: dict[str, str] = {}
    for name in methods:
        opts = method_options(name, protocol)
        if name == "famo":
            forms.append(FamoForm(opts, S, rng, protocol.scale))
            impl[name] = "closed form"
        elif name in CLOSED_FORMS and (form := CLOSED_FORMS[name](opts, S, rng)) is not None:
            forms.append(form)
            impl[name] = "closed form"
        else:
            forms.append(AggregateForm(name, opts, S))
            impl[name] = "mtoframe.aggregate"
    x = np.tile(np.asarray(protocol.starts, dtype=np.float64), (M, 1, 1))  # [M, S, 2]
    m1, v1 = np.zeros_like(x), np.zeros_like(x)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, protocol.lr
    limit = np.asarray([budget[m] for m in methods])
    traj = [x.copy()]
    seconds = np.zeros(M)
    for it in range(total):
        L, G = toy_losses_and_grads(x, protocol.scale)
        d = np.empty_like(x)
        for j, form in enumerate(forms):
            if it >= limit[j]:
                d[j] = 0.0
                continue
            t0 = time.perf_counter()
            if it > 0 and hasattr(form, "after"):
                form.after(L[j])
            d[j] = form(G[j], L[j])
            seconds[j] += time.perf_counter() - t0
        active = (it < limit)[:, None, None]
        # torch.optim.Adam, default betas/eps, no weight decay
        m1 = np.where(active, b1 * m1 + (1 - b1) * d, m1)
        v1 = np.where(active, b2 * v1 + (1 - b2) * d * d, v1)
        tt = np.minimum(it + 1, limit)[:, None, None]
        step = lr * (m1 / (1 - b1**tt)) / (np.sqrt(v1 / (1 - b2**tt)) + eps)
        x = np.where(active, x - step, x)
        if (it + 1) % every == 0 or it + 1 == total:
            traj.append(x.copy())
    L, _ = toy_losses_and_grads(x, protocol.scale)
    front = on_front(x)
    out: dict[str, Any] = {"protocol": protocol.name, "title": protocol.title, "scale": list(protocol.scale),
                           "starts": [list(s) for s in protocol.starts], "lr": protocol.lr, "methods": {}}
    T = np.stack(traj, 0)  # [K, M, S, 2]
    for j, name in enumerate(methods):
        out["methods"][name] = {
            "steps": int(budget[name]),
            "implementation": impl[name],
            "options": {k: v for k, v in method_options(name, protocol).items()},
            "endpoints": x[j].tolist(),
            "losses": L[j].tolist(),
            "on_front": front[j].tolist(),
            "reached": int(front[j].sum()),
            "method_seconds": float(seconds[j]),
            "trajectory": T[:, j].tolist(),
        }
    return out


def pareto_stationarity(x: np.ndarray, scale: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """Norm of the min-norm convex combination of the two gradients (0 on the Pareto set)."""
    _, G = toy_losses_and_grads(np.atleast_2d(x), scale)
    w = mgda_weights(G)[:, None]
    d = w * G[:, 0] + (1 - w) * G[:, 1]
    return np.sqrt(_dot(d, d))


def plot_protocol(result: Mapping[str, Any], path: Any) -> bool:
    from .report import pyplot

    plt = pyplot()
    if plt is None:
        return False
    names = list(result["methods"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    g1, g2 = np.meshgrid(np.linspace(-10, 10, 200), np.linspace(-10, 10, 200))
    L, _ = toy_losses_and_grads(np.stack([g1, g2], -1), result["scale"])
    avg = L.mean(-1)
    colours = plt.get_cmap("tab10")
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.axis("off")
            continue
        name = names[k]
        r = result["methods"][name]
        ax.contourf(g1, g2, avg, levels=30, cmap="Greys", alpha=0.6)
        ax.plot(PARETO_X1, [PARETO_X2] * 2, color="tab:red", lw=3, alpha=0.8, label="Pareto set")
        tr = np.asarray(r["trajectory"])  # [K, S, 2]
        for s in range(tr.shape[1]):
            ax.plot(tr[:, s, 0], tr[:, s, 1], color=colours(s), lw=1.5)
            ax.scatter(tr[0, s, 0], tr[0, s, 1], color=colours(s), marker="o", s=18)
            ax.scatter(tr[-1, s, 0], tr[-1, s, 1], color=colours(s), marker="*", s=60, edgecolor="k", lw=0.4)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_title(f"{name}: {r['reached']}/{tr.shape[1]} on front", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(result["title"] + " — mean loss, start ●, end ★, Pareto set in red", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
