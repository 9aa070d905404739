"""Peak memory of CSA (forward + backward) at real sizes, each variant in a fresh subprocess.

    python scripts/csa_memory.py [--B 8 --T 3 --C 2048 --H 36 --W 48] [--dense]

Reports the peak resident set size (``ru_maxrss``) of each child minus that of a child which only
allocates the saliency ``S`` and a gradient buffer of the same size (what any implementation
needs), next to the theoretical size of the dense ``B·T·C²`` Gram tensor that the Gram-form
implementation never allocates. ``--dense`` also runs the literal C×C implementation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

CHILD = r"""
import json, resource, sys, time
import torch
import torch.nn.functional as F
from mtoframe_repmtl import csa_loss

mode, B, T, C, H, W = sys.argv[1], *map(int, sys.argv[2:7])
torch.manual_seed(0)
torch.set_num_threads(2)
s = (torch.randn(B, T, C, H, W) * 1e-4).requires_grad_(True)
s.grad = torch.zeros_like(s)

def dense(s):
    x = s.flatten(3)
    m = F.normalize((x @ x.transpose(-1, -2)).flatten(2), dim=-1)           # [B, T, C*C]
    a = x.mean(-1)                                                          # [B, T, C]
    an = F.normalize((a.transpose(1, 2) @ a).flatten(1), dim=-1)            # [B, C*C]
    pos = torch.einsum("bd,btd->bt", an, m) / 0.07
    neg = (an @ an.T / 0.07).masked_fill(torch.eye(x.shape[0], dtype=torch.bool), float("-inf"))
    return (torch.logsumexp(neg, -1)[:, None] - pos).mean()

t0 = time.perf_counter()
if mode == "gram":
    csa_loss(s).backward()
elif mode == "dense":
    dense(s).backward()
elapsed = time.perf_counter() - t0
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"mode": mode, "peak_mib": peak_mib, "seconds": elapsed}))
"""


def run(mode: str, dims: list[int]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, *map(str, dims)],
                         check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("B", 8), ("T", 3), ("C", 2048), ("H", 36), ("W", 48)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dense", action="store_true", help="also measure the literal C×C implementation")
    a = p.parse_args()
    dims = [a.B, a.T, a.C, a.H, a.W]
    mib = 4 / 2**20
    n = a.H * a.W
    print(f"B={a.B} T={a.T} C={a.C} N=H'W'={a.H}x{a.W}={n} float32")
    print(f"S (and its gradient):        {a.B * a.T * a.C * n * mib:9.1f} MiB each")
    print(f"dense B·T·C² Gram tensor:    {a.B * a.T * a.C**2 * mib:9.1f} MiB (never allocated by csa_loss)")
    base = run("alloc", dims)
    print(f"baseline peak RSS (S + grad): {base['peak_mib']:9.1f} MiB")
    for mode in ("gram", "dense") if a.dense else ("gram",):
        r = run(mode, dims)
        above = r["peak_mib"] - base["peak_mib"]
        print(f"{mode:>5}: peak RSS {r['peak_mib']:9.1f} MiB, above baseline {above:9.1f} MiB, "
              f"forward+backward {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
