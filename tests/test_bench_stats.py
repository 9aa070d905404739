"""Statistics of the timing report (paired ratios, bootstrap intervals, noise flags) and
``mtoframe bench --compare`` on doctored result files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtoframe.bench import stats
from mtoframe.bench.speed import noise_flags
from mtoframe.bench.speed_report import noise_lines, rows
from mtoframe.errors import MtoError


def test_paired_ratio_cancels_the_drift_an_unpaired_ratio_carries():
    rng = np.random.default_rng(0)
    drift = np.linspace(1.0, 5.0, 30)  # the machine slows fivefold during the run
    rng.shuffle(drift)
    ew = 100.0 * drift * rng.uniform(0.98, 1.02, 30)
    stack = 150.0 * drift * rng.uniform(0.98, 1.02, 30)
    paired = stats.paired_ratio_ci(stack, ew)
    assert paired.value == pytest.approx(1.5, rel=0.02)
    assert paired.low <= paired.value <= paired.high and paired.relative_half_width() < 0.02
    unpaired = stats.ratio_of_medians_ci(ew, stack)  # the same numbers taken as two independent samples
    assert unpaired.relative_half_width() > 0.2


def test_median_ci_covers_the_true_median_about_as_often_as_it_says():
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(200):
        x = rng.lognormal(0.0, 0.3, 30)  # true median 1
        est = stats.median_ci(x, n_resamples=1000, seed=i)
        assert est.low <= est.value <= est.high
        hits += est.low <= 1.0 <= est.high
    assert 0.88 <= hits / 200 <= 1.0


def test_median_ci_small_and_constant_samples():
    assert stats.median_ci([2.0]).interval is None and stats.median_ci([2.0]).value == 2.0
    assert stats.median_ci([3.0] * 5).interval == [3.0, 3.0]
    with pytest.raises(MtoError, match="finite"):
        stats.median_ci([1.0, float("nan")])
    with pytest.raises(MtoError, match="rounds"):
        stats.per_round_ratios([1.0, 2.0], [1.0])


def test_median_ci_stays_within_the_sample_range():
    # four per-round ratios from a CI run whose percentile interval came out one ulp above the
    # largest (the interpolation's rounding); every resample's median lies within the range
    x = [1.627813579915543, 1.6663360309733901, 1.6661838972526142, 1.7200037665609178]
    e = stats.median_ci(x)
    assert min(x) <= e.low <= e.value <= e.high <= max(x)
    rng = np.random.default_rng(3)
    for n in (2, 3, 4, 5, 8):
        for _ in range(50):
            y = list(rng.lognormal(0.5, 0.1, n))
            e = stats.median_ci(y)
            assert min(y) <= e.low <= e.high <= max(y)


def test_change_verdicts():
    assert stats.change_verdict(stats.Estimate(1.2, 1.1, 1.3, 20)) == "slower"
    assert stats.change_verdict(stats.Estimate(0.8, 0.7, 0.9, 20)) == "faster"
    assert stats.change_verdict(stats.Estimate(1.05, 0.95, 1.15, 20)) == "same within noise"
    assert stats.change_verdict(stats.Estimate(1.5, None, None, 1)) == "same within noise"


def _record(stack: str, ratios: list[float], *, kind: str = "mtoframe", ew_ms: float = 100.0,
            cpu_ratio: float | None = None) -> dict:
    """A timing record as ``mtoframe bench`` writes it, from per-round ratios to EW."""
    est = stats.median_ci(ratios)
    cpu = stats.median_ci([cpu_ratio] * len(ratios)) if cpu_ratio is not None else est
    rec = {"stack": stack, "kind": kind, "ratio_to_ew": est.value, "ratio_to_ew_ci": est.interval,
           "ratio_to_ew_wall": est.value, "ratio_to_ew_wall_ci": est.interval, "ratio_to_ew_cpu": cpu.value, "ratio_to_ew_cpu_ci": cpu.interval, "ms_median": ew_ms * est.value,
           "cpu_ms_median": ew_ms * cpu.value, "wall_summary": {"iqr_ms": 0.0}, "peak_mem_mib": None,
           "rounds": [{"wall_ms": ew_ms * r, "cpu_ms": ew_ms * r, "ratio_to_ew": r} for r in ratios],
           "workload": {"name": "scenes"}, "environment": {"torch_threads": 2, "cpu_count": 2,
                                                           "load_average_1min": 3.0},
           "run": {"rounds": len(ratios), "warmup": 3, "confidence": 0.95, "headline": "wall"}, "error": None}
    rec["noise"] = noise_flags(rec)
    return rec


def _noisy(center: float, spread: float, n: int = 20, seed: int = 0) -> list[float]:
    return (center * (1 + np.random.default_rng(seed).uniform(-spread, spread, n))).tolist()


def test_a_ratio_below_one_of_a_stack_doing_ews_work_is_flagged_as_noise():
    recs = [_record("ew", [1.0] * 20), _record("ew#2", _noisy(1.0, 0.03), kind="reference"),
            _record("uw", _noisy(0.93, 0.02)), _record("torchjd:ew", _noisy(0.9, 0.02), kind="torchjd")]
    flags = {r["stack"]: r["noise"] for r in recs}
    assert flags["uw"] == ["below_ew"] and flags["torchjd:ew"] == [] and flags["ew"] == []
    text = "\n".join(noise_lines(recs))
    assert "below 1× EW: uw." in text and "noise, not a speed-up" in text
    assert "whole interval below 1 for uw" in text  # its interval is below 1 too: a bias
    assert "NOISY" not in text
    cells = {row[0]: row for row in rows(recs)}  # no ratio below 1 of such a stack goes unmarked
    assert cells["uw"][1].endswith("†") and cells["uw"][3].endswith("†") and cells["uw"][-1] == "below_ew"
    assert not cells["torchjd:ew"][1].endswith("†")
    assert [row[0] for row in rows(recs)] == ["torchjd:ew", "uw", "ew", "ew#2"]  # sorted by the headline


def test_wide_intervals_print_a_noisy_line_with_advice():
    recs = [_record("ew", [1.0] * 20), _record("ew#2", _noisy(1.0, 0.4), kind="reference"),
            _record("pcgrad", _noisy(1.9, 0.5, seed=1))]
    assert "wide" in next(r for r in recs if r["stack"] == "pcgrad")["noise"]
    (check, noisy) = noise_lines(recs)
    assert check.startswith("noise check: EW against itself")
    assert noisy.startswith("NOISY RUN") and "--threads 1" in noisy and "--rounds" in noisy and "quieter" in noisy


def _write(path, records) -> str:
    path.write_text(json.dumps(records))
    return str(path)


def test_compare_gives_per_stack_verdicts_and_fails_on_a_regression_beyond_the_threshold(tmp_path, capsys):
    from mtoframe.cli import main

    old = [_record("ew", [1.0] * 20), _record("pcgrad", _noisy(1.8, 0.03, seed=1)),
           _record("famo", _noisy(1.4, 0.03, seed=2)), _record("uw", _noisy(1.02, 0.03, seed=3)),
           _record("gone", _noisy(1.1, 0.03, seed=4))]
    slow = 300.0  # another machine: absolute times differ, ratios to EW do not
    new = [_record("ew", [1.0] * 20, ew_ms=slow),
           _record("pcgrad", _noisy(1.8 * 1.25, 0.03, seed=5), ew_ms=slow),  # 25% slower
           _record("famo", _noisy(1.4 * 0.8, 0.03, seed=6), ew_ms=slow),  # 20% faster
           _record("uw", _noisy(1.02, 0.03, seed=7), ew_ms=slow), _record("added", _noisy(1.1, 0.03, seed=8), ew_ms=slow)]
    a, b = _write(tmp_path / "old.json", old), _write(tmp_path / "new.json", new)

    assert main(["bench", "--compare", a, b]) == 0
    out = capsys.readouterr().out
    verdicts = {line.split()[0]: line.split(maxsplit=6)[-1] for line in out.splitlines()
                if line.split() and line.split()[0] in ("pcgrad", "famo", "uw")}
    assert verdicts == {"pcgrad": "slower", "famo": "faster", "uw": "same within noise"}
    assert "only in OLD: gone" in out and "only in NEW: added" in out
    assert "EW's own step time NEW / OLD: 3.000" in out

    assert main(["bench", "--compare", a, b, "--fail-on-regression", "10"]) == 1
    assert "REGRESSION beyond 10% and beyond noise: pcgrad (+2" in capsys.readouterr().out
    assert main(["bench", "--compare", a, b, "--fail-on-regression", "40"]) == 0  # 25% < 40%
    assert main(["bench", "--compare", a, a, "--fail-on-regression", "0"]) == 0  # a run against itself


def test_compare_notes_runs_timed_with_different_warm_steps(tmp_path, capsys):
    from mtoframe.cli import main

    before = [_record("ew", [1.0] * 20), _record("pcgrad", _noisy(1.8, 0.03, seed=1))]  # no run.warm_steps: 0
    after = [_record("ew", [1.0] * 20), _record("pcgrad", _noisy(1.8, 0.03, seed=2))]
    for rec in after:
        rec["run"]["warm_steps"] = 1
    a, b = _write(tmp_path / "old.json", before), _write(tmp_path / "new.json", after)
    assert main(["bench", "--compare", a, b]) == 0
    assert "note: the runs timed differently (OLD 0, NEW 1 untimed steps" in capsys.readouterr().out
    assert main(["bench", "--compare", b, b]) == 0
    assert "timed differently" not in capsys.readouterr().out


def test_compare_rejects_files_it_cannot_read(tmp_path, capsys):
    from mtoframe.cli import main

    good = _write(tmp_path / "good.json", [_record("ew", [1.0] * 5)])
    old_format = _write(tmp_path / "old.json", [{"stack": "ew", "error": None, "rounds": 30, "ratio_to_ew": 1.0}])
    assert main(["bench", "--compare", good, old_format]) == 2
    assert "per-round 'rounds' list" in capsys.readouterr().err
    assert main(["bench", "--compare", good, str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["bench", "--fail-on-regression", "5"]) == 2
    assert "needs --compare" in capsys.readouterr().err
    assert main(["bench", "--compare", good, good, "--fail-on-regression", "-1"]) == 2
