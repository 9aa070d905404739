"""``--threads N`` caps numpy's BLAS pool too, not only torch's (run in a child: the limit is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, numpy  # numpy's BLAS is loaded before the limit, as in the bench
from threadpoolctl import threadpool_info
from mtoframe.bench.threads import limit_threads
import torch
limit_threads(1)
print(json.dumps({"torch": torch.get_num_threads(), "pools": [p["num_threads"] for p in threadpool_info()]}))
"""


def test_limit_threads_caps_torch_and_every_blas_pool() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env={"PATH": "", "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] == 1
    assert got["pools"] and all(n == 1 for n in got["pools"])
