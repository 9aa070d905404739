"""Cost of the per-task gradient traffic across ranks: all-reduce of a T×P matrix vs of one P
vector (what DDP reduces for a loss-only stack), measured side by side on the same process group.

    python benchmarks/distributed_allreduce.py [--tasks 3] [--params 1000000] [--ranks 2] [--backend gloo]

Prints median milliseconds per all-reduce and their ratio (rank 0).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _time(tensor: torch.Tensor, repeats: int) -> float:
    dist.all_reduce(tensor)  # warm-up: connection set-up and buffers
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(tensor)
        if tensor.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(args.backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    device = torch.device("cuda", rank) if args.backend == "nccl" else torch.device("cpu")
    try:
        results = {}
        for dtype in (torch.float32, torch.float64):
            vec = torch.randn(args.params, dtype=dtype, device=device)
            mat = torch.randn(args.tasks, args.params, dtype=dtype, device=device)
            results[dtype] = (_time(vec, args.repeats), _time(mat, args.repeats))
        if rank == 0:
            print(f"backend={args.backend} ranks={world} T={args.tasks} P={args.params} threads={torch.get_num_threads()}")
            for dtype, (v, m) in results.items():
                mb = args.tasks * args.params * torch.tensor([], dtype=dtype).element_size() / 2**20
                print(f"{str(dtype):14s} P vector {v:8.2f} ms | T×P matrix ({mb:.0f} MiB) {m:8.2f} ms | ratio {m / v:5.2f}")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args.ranks, port, args), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
