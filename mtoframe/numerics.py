"""Shared numerics of the gradient methods: Gram matrices, simplex projection, exact min-norm
point of a convex hull, non-negative QP on a Gram matrix, norm clipping.

Everything works on the ``T×T`` Gram matrix ``K = G Gᵀ`` rather than on ``G`` (``T×P``), so the
cost after ``G Gᵀ`` does not depend on ``P``.

The exact solvers (:func:`min_norm_point`, :func:`nnqp`) are active-set methods: their control
flow depends on the data, so they copy the ``T×T`` matrix once to the CPU in float64 (one small
transfer, which any exact data-dependent solver needs), iterate in numpy there (per-call overhead
of a few µs instead of torch's tens) and return their result on the input's
device and dtype. Invariances the methods rely on (a positive rescale of ``K`` does not change
the min-norm weights) are used to normalise ``K`` first, so the tolerances are relative and the
1e-8 / 1e8 gradient scales behave like scale 1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .errors import SolverError

__all__ = [
    "MinNormResult",
    "NNQPResult",
    "clip_norm",
    "combine",
    "cosine_matrix",
    "from_host",
    "gram",
    "gram_in_blocks",
    "host64",
    "min_norm_point",
    "min_norm_point_fw",
    "nnqp",
    "normalised_gram",
    "project_simplex",
    "to_float64",
]

_CPU = torch.device("cpu")


#: column-block size of :func:`gram`'s blocked product, in bytes of the ``T×c`` block (fits L2)
GRAM_BLOCK_BYTES = 768 * 1024
#: :func:`gram` is blocked only for matrices at least this large (smaller ones sit in cache anyway)
GRAM_BLOCKED_MIN_BYTES = 5 * 512 * 1024
#: ... and with a number of rows in this range (where one product was measured slower)
GRAM_BLOCKED_ROWS = range(3, 13)


def gram(grads: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """``G Gᵀ`` of a ``T×D`` matrix, optionally accumulated in ``dtype`` (e.g. float64).

    On the CPU with one intra-op thread, a matrix of 3 to 12 rows and at least 2.5 MiB is
    multiplied in column blocks of :data:`GRAM_BLOCK_BYTES` summed into one ``T×T`` result: MKL's
    single product with these shapes runs well below the memory bandwidth, and the blocked sum
    reads each block once while it sits in L2. ``benchmarks/gram_speed.py`` (float32, paired ratio
    blocked / one product; the run in docs/BENCHMARKS.md): 0.54–0.83 where blocks are used, but
    1.10–1.72 at 2 rows, 16 or 40 rows and small matrices, and 1.09–1.38 with two threads (MKL
    splits one product over them) except at 3 rows, so the one product is kept there. The two
    differ only in the order of float additions.
    """
    g = grads if dtype is None else grads.to(dtype)
    return gram_in_blocks(g) if _blocked(g) else g @ g.T


def gram_in_blocks(g: Tensor) -> Tensor:
    """``G Gᵀ`` as the sum over column blocks of :data:`GRAM_BLOCK_BYTES` (see :func:`gram`)."""
    t = g.shape[0]
    width = max(1, GRAM_BLOCK_BYTES // (t * g.element_size()))
    out = torch.zeros(t, t, dtype=g.dtype, device=g.device)
    for block in torch.split(g, width, dim=1):
        out.addmm_(block, block.T)
    return out


def _blocked(g: Tensor) -> bool:
    return (g.device.type == "cpu" and g.shape[0] in GRAM_BLOCKED_ROWS and not g.requires_grad
            and g.dtype in (torch.float32, torch.float64)
            and g.numel() * g.element_size() >= GRAM_BLOCKED_MIN_BYTES and torch.get_num_threads() == 1)


def combine(weights: Tensor, grads: Tensor) -> Tensor:
    """``weights @ grads`` in the gradients' dtype and device: ``Σ_t w_t g_t`` for a ``T``-vector
    of weights, the rows ``C G`` for a ``T×T`` coefficient matrix (weights may come from float64
    ``T×T`` work, possibly on the host)."""
    if weights.dtype != grads.dtype or weights.device != grads.device:
        # a torch cast, not numpy's: weights in numpy-allocated memory make the product ~10% slower
        weights = weights.to(device=grads.device, dtype=grads.dtype)
    out: Tensor = weights @ grads
    return out


def normalised_gram(k: Tensor) -> Tensor:
    """``K / max_t K_tt`` (zero stays zero): same minimisers, scale-free tolerances."""
    scale = k.diagonal().max()
    return k / torch.where(scale > 0, scale, torch.ones_like(scale))


def cosine_matrix(k: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarities ``K_ij / (‖g_i‖ ‖g_j‖)`` from a Gram matrix; zero rows give 0."""
    n = k.diagonal().clamp_min(0).sqrt()
    return k / (n.unsqueeze(0) * n.unsqueeze(1)).clamp_min(eps)


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` (last dimension) onto the probability simplex.

    Sort-based algorithm (Held, Wolfe & Crowder 1974; Duchi et al., ICML 2008): ``max(v − τ, 0)``
    with ``τ`` chosen so that the result sums to one. Batched over leading dimensions; no sync.
    """
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    ks = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    cond = u - css / ks > 0
    # the last index where cond holds (cond is true on a prefix)
    rho = cond.to(torch.long).cumsum(-1).argmax(-1, keepdim=True)
    tau = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - tau).clamp_min(0)


def clip_norm(vector: Tensor, max_norm: float, eps: float = 1e-6) -> Tensor:
    """``vector`` rescaled to norm at most ``max_norm`` (``max_norm <= 0``: unchanged).

    Same coefficient as :func:`torch.nn.utils.clip_grad_norm_` (``max_norm / (‖v‖ + 1e-6)``,
    capped at one), computed without a host sync.
    """
    if max_norm <= 0:
        return vector
    coef = (max_norm / (torch.linalg.vector_norm(vector) + eps)).clamp(max=1.0)
    clipped: Tensor = vector * coef
    return clipped


# -- min-norm point of a convex hull -------------------------------------------------------------


class MinNormResult(NamedTuple):
    """Weights ``w`` on the simplex of the min-norm point ``Gᵀw`` and how the solve went.

    ``gap`` is the Frank–Wolfe duality gap ``wᵀKw − min_j (Kw)_j`` relative to ``max_t K_tt``
    (zero at the optimum, and an upper bound on the relative excess of ``‖Gᵀw‖²``)."""

    weights: Tensor
    gap: float
    iterations: int
    converged: bool


def min_norm_point(k: Tensor, *, tol: float = 1e-12, max_iter: int | None = None) -> MinNormResult:
    """Exact min-norm point of the convex hull of the rows of ``G`` from ``K = G Gᵀ``.

    Solves ``min_w wᵀKw`` over the simplex with Wolfe's algorithm (Wolfe, Math. Programming
    1976), which keeps an affinely independent support ("corral") so every affine sub-problem is
    non-singular even when ``G`` is rank-deficient or has duplicate rows. Terminates in finitely
    many steps in exact arithmetic; stops when the relative duality gap is below ``tol``.
    ``converged`` is False only if ``max_iter`` (default ``50·T + 50``) ran out; the weights are
    then the best feasible iterate, and the caller decides what to do (never silently).
    """
    T = k.shape[0]
    if k.shape != (T, T) or T == 0:
        raise SolverError(f"min_norm_point needs a non-empty square Gram matrix, got shape {tuple(k.shape)}")
    if T == 1:
        return MinNormResult(torch.ones(1, dtype=k.dtype, device=k.device), 0.0, 0, True)
    K = _host(k)
    if not np.isfinite(K).all():
        raise SolverError("min_norm_point: the Gram matrix has non-finite entries")
    top = K.diagonal().max()
    if top > 0:  # normalised_gram's K / max_t K_tt, on the host copy (numpy: µs, not torch's tens)
        K = K / top
    max_iter = 50 * T + 50 if max_iter is None else max_iter
    interior = _interior_minimiser(K, tol)
    if interior is not None:
        return MinNormResult(from_host(interior[0], k), interior[1], 0, True)
    w = np.zeros(T)
    i0 = int(K.diagonal().argmin())
    w[i0] = 1.0
    support = [i0]
    it = 0
    while it < max_iter:
        kw = K @ w
        j = int(kw.argmin())
        if w @ kw - kw[j] <= tol or j in support:
            # j in the corral means x is already the affine minimiser over it: optimal up to round-off
            break
        support.append(j)
        # minor cycles: move towards the affine minimiser of the corral, dropping points that
        # hit zero weight, until the affine minimiser lies inside the corral's hull
        while it < max_iter:
            it += 1
            alpha = _affine_minimiser(K, support)
            ws = w[support]
            if (alpha > 1e-15).all():
                w[:] = 0.0
                w[support] = alpha
                break
            neg = alpha <= 1e-15
            theta = float(np.clip(np.min(ws[neg] / (ws[neg] - alpha[neg])), 0.0, 1.0))
            new = ws + theta * (alpha - ws)
            keep = new > 1e-15
            w[:] = 0.0
            support = [s for s, kp in zip(support, keep, strict=True) if kp]
            w[support] = new[keep]
            w /= w.sum()
    kw = K @ w
    gap = max(float(w @ kw - kw.min()), 0.0)
    converged = it < max_iter or gap <= tol
    return MinNormResult(from_host(w, k), gap, it, converged)


def _interior_minimiser(K: np.ndarray, tol: float) -> tuple[np.ndarray, float] | None:
    """The min-norm point when it lies inside the hull (every weight positive, as for gradients
    sharing a common component): then it is the minimiser over the whole affine hull, one linear
    solve, where Wolfe's algorithm would add the points one major cycle at a time. ``None`` when
    that minimiser is not strictly inside, not optimal to ``tol`` or the system is singular."""
    T = K.shape[0]
    A = np.ones((T + 1, T + 1))
    A[:T, :T] = K
    A[T, T] = 0.0
    b = np.zeros(T + 1)
    b[T] = 1.0
    try:
        w = np.linalg.solve(A, b)[:T]
    except np.linalg.LinAlgError:
        return None  # affinely dependent rows: Wolfe's corral handles them
    if not (np.isfinite(w).all() and (w > 1e-15).all()):
        return None
    w = w / w.sum()
    kw = K @ w
    gap = float(w @ kw - kw.min())
    return (w, max(gap, 0.0)) if gap <= tol else None


def host64(t: Tensor) -> np.ndarray:
    """``t`` as a float64 numpy array on the host, detached. Only the conversions it needs are
    dispatched: right after ``G Gᵀ`` has swept the CPU caches every torch call costs 10–20 µs,
    even one that returns its input, and an attribute read does not."""
    return to_float64(t, _CPU).numpy()


def to_float64(t: Tensor, device: torch.device) -> Tensor:
    """``t`` detached, as float64 on ``device``, converted only if it is not already (see
    :func:`host64` for why). The cast is torch's: right after ``G Gᵀ`` torch's code is still
    in cache and numpy's is not.
    """
    if t.requires_grad:
        t = t.detach()
    if t.dtype == torch.float64 and t.device == device:
        return t
    return t.to(device, torch.float64)


def from_host(a: np.ndarray, like: Tensor) -> Tensor:
    """The numpy array ``a`` as a tensor of ``like``'s dtype and device (converted only if needed)."""
    t = torch.from_numpy(a)
    if t.dtype != like.dtype or like.device.type != "cpu":
        t = t.to(like.device, like.dtype)
    return t


def _host(t: Tensor) -> np.ndarray:
    # the tiny active-set loops are dominated by per-call overhead, which numpy keeps at ~µs
    a = host64(t)
    return 0.5 * (a + a.T) if a.ndim == 2 and a.shape[0] == a.shape[1] else a


def _affine_minimiser(K: np.ndarray, support: list[int]) -> np.ndarray:
    """Weights (summing to one) of the min-norm point of the affine hull of the support."""
    n = len(support)
    A = np.zeros((n + 1, n + 1))
    A[:n, :n] = K[np.ix_(support, support)]
    A[:n, n] = 1.0
    A[n, :n] = 1.0
    b = np.zeros(n + 1)
    b[n] = 1.0
    # lstsq rather than solve: near-affinely-dependent corrals stay well defined in round-off
    return np.linalg.lstsq(A, b, rcond=None)[0][:n]


def min_norm_point_fw(k: Tensor, *, max_iter: int = 250) -> Tensor:
    """Frank–Wolfe min-norm weights with exact line search, on the device, no host sync.

    The behaviour of Sener & Koltun's ``MinNormSolver.find_min_norm_element_FW`` (used by LibMTL
    and the MGDA-UB code) except that it runs a fixed ``max_iter`` iterations instead of stopping
    on a host-checked tolerance, and starts from the uniform weights. Approximate: use
    :func:`min_norm_point` for a reference answer.
    """
    T = k.shape[0]
    K = normalised_gram(k.detach().to(torch.float64))
    w = torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)
    eye = torch.eye(T, dtype=K.dtype, device=K.device)
    for _ in range(max_iter):
        kw = K @ w
        j = kw.argmin()
        # exact line search on ‖(1−γ)x + γ p_j‖² for γ ∈ [0, 1]
        xx, xp, pp = w @ kw, kw[j], K[j, j]
        denom = xx - 2 * xp + pp
        gamma = torch.where(denom > 0, (xx - xp) / torch.where(denom > 0, denom, 1.0), 0.0).clamp(0.0, 1.0)
        w = (1 - gamma) * w + gamma * eye[j]
    return w.to(k.dtype)


# -- non-negative quadratic programme ----------------------------------------------------------


class NNQPResult(NamedTuple):
    """Solution ``x ≥ 0`` of ``min ½ xᵀKx + qᵀx`` and how the solve went."""

    x: Tensor
    iterations: int
    converged: bool


def nnqp(k: Tensor, q: Tensor, *, tol: float = 1e-10, max_iter: int | None = None,
         start: Tensor | None = None) -> NNQPResult:
    """``argmin_{x ≥ 0} ½ xᵀKx + qᵀx`` for a PSD ``K`` (``T×T``) and ``q`` (``T``, or ``T×m``
    for ``m`` independent right-hand sides, solved column by column).

    Lawson–Hanson active-set method written on the normal equations (it is NNLS with
    ``AᵀA = K``, ``Aᵀb = −q``), so it needs only the Gram matrix. The problem must be bounded
    (``q`` in the range of ``K`` where ``K`` is singular, as in UPGrad's dual-cone projection
    ``q = K e_i``). ``tol`` is relative to ``max_t K_tt``. KKT at the solution:
    ``x ≥ 0``, ``Kx + q ≥ −tol``, ``x ⊙ (Kx + q) = 0``.

    ``start``: a guess of the support of ``x`` (boolean, the shape of ``q``), e.g. the previous
    solution's ``x > 0`` for a slowly changing ``K``; it only changes where the active-set method
    starts, not its answer. Default: ``{j : q_j < 0}``.
    """
    T = k.shape[0]
    if k.shape != (T, T) or q.shape[0] != T:
        raise SolverError(f"nnqp: K must be T×T and q have T rows; got {tuple(k.shape)} and {tuple(q.shape)}")
    if start is not None and (start.shape != q.shape or start.dtype != torch.bool):
        raise SolverError(f"nnqp: start must be a boolean tensor of q's shape {tuple(q.shape)}; "
                          f"got {start.dtype} of shape {tuple(start.shape)}")
    K = _host(k)
    Q = host64(q)
    if not (np.isfinite(K).all() and np.isfinite(Q).all()):
        raise SolverError("nnqp: non-finite entries in K or q")
    scale = float(K.diagonal().max())
    if scale <= 0:
        # K = 0: the objective is linear; bounded only for q >= 0, solved by x = 0
        return NNQPResult(torch.zeros_like(q), 0, bool((Q >= -tol).all()))
    K, Q = K / scale, Q / scale
    max_iter = 30 * T + 30 if max_iter is None else max_iter
    guess = None if start is None else start.detach().cpu().numpy().reshape(T, -1)
    x, its, ok = _nnqp_columns(K, Q.reshape(T, -1), tol, max_iter, guess)
    return NNQPResult(from_host(x.reshape(q.shape), q), int(its.sum()), bool(ok.all()))


#: rounds of :func:`_nnqp_columns` that add every violated constraint at once before adding one
#: per major cycle; a heuristic (it may visit a worse face, so it is capped), the one-at-a-time
#: loop after it is what guarantees the end. 1, 3, 6 and 12 gave similar counts at T = 40.
BLOCK_ROUNDS = 3


def _nnqp_columns(K: np.ndarray, Q: np.ndarray, tol: float, max_iter: int,
                  guess: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lawson–Hanson on every column of ``Q`` at once: each column keeps its own passive set and
    iteration count, and every inner step solves the sub-systems ``K[P, P] z = −q[P]`` of all
    columns still iterating in one batched call (``K`` bordered by the identity outside ``P``).
    Returns ``X``, the iterations per column and whether each converged.

    The loop starts from a guessed passive set (``guess``, else ``{j : q_j < 0}``: the
    constraints pushed on at ``x = 0``; for UPGrad's ``q = K e_i`` the tasks conflicting with
    task ``i``), shrunk until its sub-system solution is positive (:func:`_shrink`). Then up to
    :data:`BLOCK_ROUNDS` times, every violated constraint joins the passive set at once and the
    set is shrunk again. Each of these ends in ``x = z`` on a set where ``z > 0``: a state
    Lawson–Hanson itself passes through (the end of an inner loop), so its loop continues from
    there and ends at the same KKT point as from ``x = 0``. With a good guess (pairwise
    conflicts, or the previous step's support) nothing is left to do; otherwise the block rounds
    save most of the major cycles that add one constraint each (on the ``manytask`` Grams at
    T = 40, about half the pairs conflicting: ~750 iterations from ``x = 0``, ~230 after the
    shrunk guess alone, ~130–190 with the block rounds)."""
    T, m = Q.shape
    X = np.zeros((T, m))
    its = np.zeros(m, dtype=np.int64)
    passive = (Q < 0) if guess is None else guess.astype(bool).copy()
    _shrink(K, Q, X, passive, its, np.flatnonzero(passive.any(0)), max_iter)
    for block in range(BLOCK_ROUNDS + 1):
        add = np.where(passive, -np.inf, -(K @ X + Q)) > tol
        violated = add.any(0)
        cols = np.flatnonzero(violated & (its < max_iter))
        if block == BLOCK_ROUNDS or not cols.size:
            break
        passive[:, cols] |= add[:, cols]
        _shrink(K, Q, X, passive, its, cols, max_iter)
    ok = ~violated & (its < max_iter)
    live = np.flatnonzero(violated)
    while live.size:
        W = -(K @ X[:, live] + Q[:, live])  # negative gradient: the NNLS dual
        W[passive[:, live]] = -np.inf
        j = W.argmax(0)
        done = (W[j, np.arange(live.size)] <= tol) | (its[live] >= max_iter)
        ok[live[done]] = its[live[done]] < max_iter
        live, j = live[~done], j[~done]
        passive[j, live] = True
        inner = live
        while inner.size:
            its[inner] += 1
            z = _passive_solutions(K, Q[:, inner], passive[:, inner])
            p = passive[:, inner]
            feasible = ((z > 0) | ~p).all(0)
            X[:, inner[feasible]] = z[:, feasible]
            inner, z, p = inner[~feasible], z[:, ~feasible], p[:, ~feasible]
            if not inner.size:
                break
            x = X[:, inner]
            neg = p & (z <= 0)
            ratio = np.where(neg, x / np.where(neg, x - z, 1.0), np.inf)
            x = x + ratio.min(0) * (z - x)
            drop = p & (x <= 1e-15)
            x[drop] = 0.0
            X[:, inner] = x
            passive[:, inner] = p & ~drop
            inner = inner[its[inner] < max_iter]
    return X, its, ok


def _shrink(K: np.ndarray, Q: np.ndarray, X: np.ndarray, passive: np.ndarray, its: np.ndarray,
            cols: np.ndarray, max_iter: int) -> None:
    """In place, for the columns ``cols``: solve on the passive set, drop its non-positive
    entries, and repeat until the solution is positive on it (``X`` is that solution)."""
    while cols.size:
        its[cols] += 1
        p = passive[:, cols]
        z = _passive_solutions(K, Q[:, cols], p)
        bad = p & (z <= 0)
        X[:, cols] = np.where(bad, 0.0, z)
        passive[:, cols] = p & ~bad
        cols = cols[bad.any(0) & (its[cols] < max_iter)]


def _passive_solutions(K: np.ndarray, Q: np.ndarray, passive: np.ndarray) -> np.ndarray:
    """``z`` (``T×n``) with ``K[P, P] z[P] = −q[P]`` and ``z = 0`` off ``P``, for each column's
    passive set ``P``; least squares where a sub-system is singular (rank-deficient ``K``)."""
    T, n = passive.shape
    both = passive.T[:, :, None] & passive.T[:, None, :]
    M = np.where(both, K[None], np.eye(T)[None])
    r = np.where(passive.T, -Q.T, 0.0)
    try:
        z = np.linalg.solve(M, r[..., None])[..., 0]
        residual = np.abs(np.einsum("nij,nj->ni", M, z) - r).max(1)
        bad = ~np.isfinite(z).all(1) | (residual > 1e-9 * (1 + np.abs(r).max(1)))
    except np.linalg.LinAlgError:
        z, bad = np.zeros((n, T)), np.ones(n, dtype=bool)
    for c in np.flatnonzero(bad):
        # lstsq rather than solve: a singular sub-system keeps its minimum-norm solution
        z[c] = np.linalg.lstsq(M[c], r[c], rcond=None)[0]
    return np.where(passive, z.T, 0.0)
