"""``mtoframe bench --quality`` at tiny sizes: structure of the result and its summary numbers
against :mod:`mtoframe.metrics` computed by hand from the per-seed metrics."""

from __future__ import annotations

import json
import statistics

import pytest

import mtoframe
from mtoframe.bench.quality import CHECKPOINT_RULE, QualityConfig, run_quality
from mtoframe.metrics import delta_m, delta_p_task


def test_quality_summary(tmp_path, one_thread):
    cfg = QualityConfig(size=16, batch=4, width=4, seeds=2, epochs=1, n_train=8, n_val=4,
                        cache_dir=str(tmp_path / "cache"))
    stacks = [["ew"]] + [[n] for n in ("rlw", "pcgrad") if n in mtoframe.available()][:1]
    res = run_quality(stacks, cfg, say=lambda s: None)
    assert res["checkpoint_rule"] == CHECKPOINT_RULE
    base = res["baseline"]["metrics"]
    assert set(base) == {"segmentation", "depth", "normal"}
    # the baseline is the mean over seeds of the single-task runs
    per = res["baseline"]["per_seed"]
    assert base["depth"]["abs_err"] == pytest.approx(statistics.fmean(per[s]["depth"]["abs_err"] for s in per))
    assert [r["stack"] for r in res["records"]] and len(res["records"]) == len(stacks)
    gone = set(res["excluded_from_deltas"])
    assert all(base[k.split("/")[0]][k.split("/")[1]] == 0 for k in gone)
    dirs = {t: {m: d for m, d in ds.items() if f"{t}/{m}" not in gone} for t, ds in res["directions"].items()}

    def keep(r):
        return {t: {m: v for m, v in ms.items() if m in dirs[t]} for t, ms in r.items()}

    for r in res["records"]:
        dp = [delta_p_task(keep(m), keep(base), dirs) for m in r["per_seed"].values()]
        dm = [delta_m(keep(m), keep(base), dirs) for m in r["per_seed"].values()]
        assert r["delta_p_task"] == pytest.approx(statistics.fmean(dp))
        assert r["delta_m"] == pytest.approx(statistics.fmean(dm))
        assert 1.0 <= r["mean_rank"] <= len(stacks)
        assert r["seeds"] == [0, 1]


def test_quality_cli(tmp_path, monkeypatch, capsys, one_thread):
    from mtoframe.cli import main

    monkeypatch.setenv("MTOFRAME_CACHE", str(tmp_path / "cache"))
    rc = main(["bench", "--quality", "--quick", "--size", "16", "--batch", "4", "--width", "4", "--seeds", "1",
               "--epochs", "1", "--n-train", "8", "--n-val", "4", "--methods", "ew", "--out", str(tmp_path / "q")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "checkpoint rule: last epoch" in out and "Δp_task" in out and "Δm" in out
    data = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert data["records"][0]["stack"] == "ew"
    assert (tmp_path / "q" / "quality.md").exists()
