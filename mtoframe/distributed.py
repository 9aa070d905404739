"""Data-parallel training across ``torch.distributed`` ranks (torchrun; gloo on CPU, NCCL on GPU).

The trainer detects an initialised default process group and then makes ``N`` ranks, each stepping
on its own equal-sized shard, produce the parameters of **one process stepping on the union batch**
(task losses are batch means, so the union loss is the mean of the ranks' losses):

* **losses** — ``ctx.losses`` carries the union value (all-reduced mean) with this rank's local
  gradient: ``L_glob.detach() + (L_r - L_r.detach())``. Any function ``f`` of the losses that a loss
  method builds (FAMO's logs, DB-MTL's log-losses, DWA's ratios, UW's weights) then has gradient
  ``f'(L_glob) ∇L_r``, whose mean over ranks is the union's ``f'(L) ∇L`` exactly; loss methods
  need no distributed code, and every rank takes the same non-finite/skip decisions.
  ``ctx.recompute_losses()`` is reduced the same way (FAMO's post-step statistic).
* **parameter space** — the per-task matrix ``G`` (T×P) is all-reduced (mean) before
  ``on_shared_grads``, so every rank aggregates the same matrix and writes the same update.
* **representation space** — ``Z`` differs per rank. The union matrix has, for rank r's rows of
  ``Z``, the entries ``∂L/∂Z_r = (1/N) ∂L_r/∂Z_r``; the ranks' local rows are all-gathered into
  it (T × N·B·d, scaled by 1/N), every rank aggregates it identically, each back-propagates
  ``N ·`` its own slice of the update through the encoder, and the encoder gradients are averaged
  (mean of ``N J_rᵀ u_r`` = ``Σ_r J_rᵀ u_r``, the union's encoder gradient).
* **everything else** (heads, regularisers, learnable method parameters; and every gradient for
  loss-only stacks) is reduced as one mean all-reduce of the flattened ``.grad`` buffers — the
  same arithmetic as DDP's reducer (sum then divide by N), see docs/distributed.md for why the
  model is not wrapped in ``DistributedDataParallel``.

Requirements: every rank has the same tasks present and the same batch size in every step
(``DistributedSampler`` pads to equal shards), and methods are built with the same options (so
seeded generators agree). The initial parameters are broadcast from rank 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import BatchError, MtoError


def is_distributed() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over ranks (a new, detached tensor; the input itself when not distributed)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


class _AllGatherCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, dim: int) -> Tensor:
        ctx.dim, ctx.size = dim, tensor.shape[dim]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        # Every rank's loss reads every rank's part: this rank's rows receive the sum of all
        # ranks' gradients for them (a reduce-scatter, done as all-reduce because gloo lacks one).
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(ctx.dim, dist.get_rank() * ctx.size, ctx.size), None


def all_gather_cat(tensor: Tensor, dim: int = 0) -> Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` (rank order), with autograd.

    The backward pass all-reduces the incoming gradient and hands each rank its own rows, so a loss
    computed identically on every rank from the gathered tensor (e.g. Rep-MTL's CSA over the global
    batch's anchors, each rank averaging its own samples' terms) gets, after the trainer's mean
    gradient reduction, the gradient of the union-batch loss. All ranks must call it in the same
    order with equal shapes. Returns ``tensor`` when not distributed.
    """
    if not is_distributed():
        return tensor
    # torch leaves Function.apply unannotated; forward's annotation says what it returns
    gathered: Tensor = _AllGatherCat.apply(tensor, dim)  # type: ignore[no-untyped-call]
    return gathered


class Communicator:
    """The trainer's collectives for one process group (the default one)."""

    def __init__(self) -> None:
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()

    # -- losses --------------------------------------------------------------------------------

    def global_losses(self, losses: Tensor, task_ids: Tensor, num_all: int) -> Tensor:
        """Union-batch loss values with this rank's gradient; checks all ranks have the same tasks."""
        present = torch.zeros(2 * num_all, dtype=torch.float64, device=losses.device)
        present[task_ids] = 1.0
        present[num_all + task_ids] = -1.0
        dist.all_reduce(present, op=dist.ReduceOp.MAX)  # max of mask and of -mask: equal iff same set
        if not torch.equal(present[:num_all], -present[num_all:]):
            raise BatchError("distributed training needs the same tasks present on every rank in each step; "
                             "shard partial-label data so every rank's batch labels the same tasks")
        mean = all_reduce_mean(losses.detach())
        return mean + (losses - losses.detach())

    def any(self, flags: Sequence[bool], device: torch.device) -> list[bool]:
        """Element-wise OR over ranks (so every rank skips the same steps)."""
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    # -- gradients -----------------------------------------------------------------------------

    def task_matrix(self, g: Tensor, space: str) -> Tensor:
        """Union-batch ``T×D`` matrix from this rank's rows (see the module docstring)."""
        if space == "params":
            out = g.contiguous().clone()
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
            return out / self.world
        parts = [torch.empty_like(g) for _ in range(self.world)]
        dist.all_gather(parts, g.contiguous())
        return torch.cat(parts, dim=1) / self.world

    def local_update(self, update: Tensor) -> Tensor:
        """This rank's slice of a representation-space union update, times N (mean-reduced later)."""
        n = update.numel() // self.world
        if n * self.world != update.numel():
            raise MtoError(f"update has {update.numel()} entries, not divisible by {self.world} ranks")
        return update.narrow(0, self.rank * n, n) * self.world

    def reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Mean of ``.grad`` over ranks, one flattened all-reduce per dtype/device (DDP's arithmetic)."""
        buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for p in params:
            # Same tasks on every rank, so the same parameters lack a gradient everywhere; they stay
            # None (zeros would still move Adam's momentum, unlike the single-process run).
            if p.requires_grad and p.grad is not None:
                buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for key in sorted(buckets, key=str):
            grads = buckets[key]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world
            for g, chunk in zip(grads, torch.split(flat, [g.numel() for g in grads]), strict=True):
                g.copy_(chunk.view_as(g))

    def broadcast(self, tensors: Iterable[Tensor]) -> None:
        """Copy rank 0's values into ``tensors`` on every rank (initial parameters and buffers)."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data if isinstance(t, torch.nn.Parameter) else t, src=0)


def shard_loader(loader: Any, *, seed: int = 0) -> Any:
    """A ``DataLoader`` without a ``DistributedSampler``, rebuilt with one (same batch size,
    collate, workers; shuffled iff the original shuffled). Other iterables are returned as they
    are: the user shards them."""
    from torch.utils.data import DataLoader, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    if not is_distributed() or not isinstance(loader, DataLoader) or isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise MtoError("distributed fit needs a DataLoader with batch_size (not a custom batch_sampler), "
                       "or pass one built with torch.utils.data.distributed.DistributedSampler")
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler: DistributedSampler[int] = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Reshuffle a ``DistributedSampler`` per epoch (as ``DataLoader`` shuffling does)."""
    reshuffle = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if callable(reshuffle):
        reshuffle(epoch)
