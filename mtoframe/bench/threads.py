"""One knob for every thread pool a timed step can use: torch's intra-op pool and the BLAS/OpenMP
pools of numpy and scipy (through threadpoolctl).

``torch.set_num_threads`` alone leaves numpy's OpenBLAS with a thread per core. Methods that do
their ``T×T`` work in numpy (QP solvers, cvxpy, the host-side weightings) then wake those threads,
which spin after each call and are charged to whichever step runs next: at T = 40 EW's process CPU
time per step read twice its wall time, and a CPU-time ratio of CAGrad to its peer read 1.29× while
wall time read 0.88×.
"""

from __future__ import annotations

from typing import Any

import torch
from threadpoolctl import threadpool_limits

# held for the life of the process: the limit must outlast the call that set it
_limits: list[Any] = []


def limit_threads(n: int) -> None:
    """Use ``n`` threads in torch and in every BLAS/OpenMP pool loaded so far or later in the run."""
    torch.set_num_threads(n)
    _limits.append(threadpool_limits(limits=n))
