"""``mtoframe bench --tasks 2,3,...``: the least-squares growth fit and the sweep's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from mtoframe.bench.sweep import fit_linear
from mtoframe.errors import MtoError


def test_fit_recovers_an_exact_line_with_zero_residual() -> None:
    fit = fit_linear([2, 3, 5, 10, 20, 40], [1.5 + 0.25 * t for t in (2, 3, 5, 10, 20, 40)])
    assert fit.a == pytest.approx(1.5, abs=1e-12) and fit.b == pytest.approx(0.25, abs=1e-12)
    assert fit.residual == pytest.approx(0.0, abs=1e-12)
    assert fit.b_interval is not None and fit.b_interval[1] - fit.b_interval[0] == pytest.approx(0.0, abs=1e-12)


def test_fit_equals_scipy_linregress_and_its_t_interval() -> None:
    rng = np.random.default_rng(0)
    x = np.array([2, 3, 5, 10, 20, 40], dtype=float)
    y = 3.0 + 0.7 * x + rng.normal(0, 0.5, size=x.size)
    fit = fit_linear(x.tolist(), y.tolist())
    ref = sps.linregress(x, y)
    half = sps.t.ppf(0.975, x.size - 2) * ref.stderr
    assert fit.a == pytest.approx(ref.intercept, rel=1e-12) and fit.b == pytest.approx(ref.slope, rel=1e-12)
    assert fit.b_interval == pytest.approx((ref.slope - half, ref.slope + half), rel=1e-10)
    assert fit.residual == pytest.approx(np.sqrt(np.mean((y - ref.intercept - ref.slope * x) ** 2)), rel=1e-12)


def test_fit_of_two_points_has_no_interval_and_bad_input_is_named() -> None:
    assert fit_linear([2, 4], [1.0, 2.0]).b_interval is None
    with pytest.raises(MtoError, match="two or more"):
        fit_linear([2], [1.0])
    with pytest.raises(MtoError, match="distinct x"):
        fit_linear([3, 3, 3], [1.0, 2.0, 3.0])


def test_bench_task_sweep_writes_each_run_and_the_fit(tmp_path, one_thread) -> None:
    from mtoframe.cli import main

    rc = main(["bench", "--quick", "--tasks", "3,2,4", "--batch", "8", "--rounds", "3", "--warmup", "1",
               "--threads", "1", "--methods", "ew", "--no-memory", "--out", str(tmp_path)])
    assert rc == 0
    for t in (2, 3, 4):
        rec = json.loads((tmp_path / f"T{t}" / "results.json").read_text())[0]
        assert rec["workload"]["tasks"] == t
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["tasks"] == [2, 3, 4] and set(summary["fits"]) == {"ew", "ew#2"}
    key = "cpu_ms_median"  # one thread on CPU: the headline clock
    ms = [summary["runs"][str(t)][0][key] for t in (2, 3, 4)]
    want = fit_linear([2, 3, 4], ms)
    assert summary["fits"]["ew"]["b"] == pytest.approx(want.b, rel=1e-12)
    assert "time = a + b*T" in (tmp_path / "sweep.md").read_text()


@pytest.mark.parametrize("bad", ["1", "2,41", "3,3", "2,x"])
def test_bad_task_counts_are_named(tmp_path, capsys, bad) -> None:
    from mtoframe.cli import main

    try:
        rc = main(["bench", "--tasks", bad, "--out", str(tmp_path)])
    except SystemExit as exc:  # argparse rejects what is not a list of integers
        rc = exc.code
    assert rc == 2
    assert "--tasks" in capsys.readouterr().err


def test_ratio_to_the_peer_is_the_median_of_paired_round_ratios(tmp_path, one_thread, capsys) -> None:
    pytest.importorskip("torchjd.autojac")
    from mtoframe.bench import stats
    from mtoframe.cli import main

    assert main(["bench", "--quick", "--tasks", "3", "--batch", "8", "--rounds", "4", "--warmup", "1",
                 "--threads", "1", "--methods", "ew", "--peers", "torchjd", "--no-memory", "--out", str(tmp_path)]) == 0
    records = {r["stack"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    ew, peer = records["ew"], records["torchjd:ew"]
    assert ew["peer"] == "torchjd:ew" and peer["peer"] is None and records["ew#2"]["peer"] is None
    want = stats.paired_ratio_ci([r["cpu_ms"] for r in ew["rounds"]], [r["cpu_ms"] for r in peer["rounds"]])
    assert ew["ratio_to_peer"] == pytest.approx(want.value, rel=1e-12)
    assert ew["ratio_to_peer_ci"] == pytest.approx(want.interval, rel=1e-12)
    assert f"ew / torchjd:ew {want.value:.2f}×" in capsys.readouterr().out
