"""The quality harness pairs every stack with EW: Rep-MTL with λ = 0 (exactly EW's gradients)
trained through it reproduces EW's per-seed metrics bit for bit, so its paired difference is 0."""

from __future__ import annotations

import torch

from mtoframe.bench.quality import QualityConfig, run_quality


def test_lambda_zero_is_paired_exactly_with_ew(tmp_path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions; the same count for every run keeps them bitwise equal
    try:
        _check(tmp_path)
    finally:
        torch.set_num_threads(before)


def _check(tmp_path) -> None:
    cfg = QualityConfig(size=16, batch=4, width=4, seeds=2, epochs=1, n_train=8, n_val=4, n_test=4,
                        cache_dir=str(tmp_path / "cache"))
    zero = [("repmtl", {"lambda_tsr": 0.0, "lambda_csa": 0.0})]
    res = run_quality([zero], cfg, say=lambda s: None)
    per = res["per_seed"]["stacks"]
    assert per["repmtl(lambda_tsr=0.0,lambda_csa=0.0)"] == per["ew"]
    rec = next(r for r in res["records"] if r["stack"].startswith("repmtl"))
    assert rec["vs_ew"] == 0.0 and rec["vs_ew_ci"] == [0.0, 0.0] and rec["verdict"] == "no difference"
