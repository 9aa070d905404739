"""``mtoframe compare``: verdicts that follow the intervals, files, resumption after a kill, and
``--workers 2`` giving the numbers of ``--workers 1``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mtoframe.bench.stats import mean_ci
from mtoframe.cli import main
from mtoframe.compare import summary
from mtoframe.compare.driver import CompareOptions, run_compare
from mtoframe.config import load_config
from mtoframe.errors import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "weather.toml"
TINY = ["data.args={ n_train = 64, n_val = 16, n_test = 32 }", "batch_size=16", "epochs=1"]
DIRECTIONS = {"a": {"err": "lower"}, "b": {"acc": "higher"}}


def _doctored(per_stack: dict[str, list[tuple[float, float]]]) -> dict:
    """Run results whose metrics are given per seed as (a/err, b/acc)."""
    return {label: {s: {"metrics": {"a": {"err": e}, "b": {"acc": a}}} for s, (e, a) in enumerate(vals)}
            for label, vals in per_stack.items()}


def test_verdicts_follow_the_intervals_on_doctored_results():
    ew = [(1.0, 0.5), (1.2, 0.6), (0.9, 0.55), (1.1, 0.5)]
    results = _doctored({
        "ew": ew,
        "steady": [(e * 0.8, a * 1.1) for e, a in ew],  # 20 % lower error, 10 % higher accuracy on every seed
        "noisy": [(e * f, a) for (e, a), f in zip(ew, (0.5, 1.6, 0.6, 1.5))],  # helps twice, hurts twice
        "bad": [(e * 1.3, a * 0.9) for e, a in ew],
    })
    quality, excluded = summary.quality_vs_ew(results, DIRECTIONS)
    assert excluded == []
    steady = quality["steady"]["delta_p_task"]
    assert steady["per_seed"] == pytest.approx([15.0] * 4) and quality["steady"]["verdict"] == "better"
    assert quality["noisy"]["delta_p_task"]["ci"][0] < 0 < quality["noisy"]["delta_p_task"]["ci"][1]
    assert quality["noisy"]["verdict"] == "no difference" and quality["bad"]["verdict"] == "worse"
    # each metric gets its own paired interval and a direction-aware verdict
    assert quality["steady"]["metrics"]["a"]["err"]["verdict"] == "better"  # lower error is better
    assert quality["bad"]["metrics"]["b"]["acc"]["verdict"] == "worse"
    timing = {"steady": {"ratio_to_ew": 1.4, "ratio_to_ew_ci": [1.3, 1.5]}}
    assert summary.stack_sentence("steady", quality["steady"], timing["steady"]) == \
        "steady: better than EW, +15.00 Δp_task [+15.00, +15.00], 1.40× EW's step time [1.30, 1.50]"
    noisy = summary.stack_sentence("noisy", quality["noisy"], None)
    assert noisy.startswith("noisy: no difference from EW within noise") and "better" not in noisy
    assert "worse than EW" in summary.stack_sentence("bad", quality["bad"], None)
    assert summary.metric_words("steady", quality["steady"]) == \
        "steady per metric: better than EW on a/err, b/acc; no difference on the others"
    assert summary.metric_words("noisy", quality["noisy"]) == "noisy per metric: no metric differs from EW within noise"
    assert summary.conclusion(quality, 4) == "steady is the only stack better than EW within its 95% interval (4 seeds)."
    del quality["steady"]
    assert summary.conclusion(quality, 4).startswith("No stack beats EW within noise on this problem")


def test_an_interval_crossing_zero_never_reads_better():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 6))
        ew = [(float(rng.uniform(0.5, 2)), float(rng.uniform(0.2, 0.9))) for _ in range(n)]
        other = [(e * float(rng.normal(1, 0.2)), a * float(rng.normal(1, 0.2))) for e, a in ew]
        quality, _ = summary.quality_vs_ew(_doctored({"ew": ew, "x": other}), DIRECTIONS)
        q = quality["x"]
        low, high = q["delta_p_task"]["ci"]
        text = summary.stack_sentence("x", q, None) + " " + summary.conclusion(quality, n)
        supported = not np.isnan(low) and low > 0
        assert ("better than EW" in text) == supported, (trial, low, high, text)
        if n == 1:
            assert "no verdict" in text


def test_overlapping_winners_are_not_ranked():
    ew = [(1.0, 0.5), (1.0, 0.5), (1.0, 0.5)]
    results = _doctored({"ew": ew, "p": [(0.8, 0.5), (0.7, 0.5), (0.75, 0.5)], "q": [(0.78, 0.5), (0.72, 0.5), (0.7, 0.5)]})
    quality, _ = summary.quality_vs_ew(results, DIRECTIONS)
    assert {q["verdict"] for q in quality.values()} == {"better"}
    assert "their intervals overlap, so these 3 seeds do not rank them" in summary.conclusion(quality, 3)


def _compare(out: Path, *, workers: int = 1, seeds: int = 2, timing_rounds: int = 0, extra=(), methods=("famo",)):
    cfg = load_config(EXAMPLE, [*TINY, *extra])
    opts = CompareOptions(stacks=tuple((m,) for m in methods), seeds=seeds, workers=workers, threads=1,
                          timing_rounds=timing_rounds)
    lines: list[str] = []
    return run_compare(cfg, opts, out, config_name="weather.toml", say=lines.append), lines


def test_end_to_end_files_tensorboard_runs_and_statistics(tmp_path):
    pytest.importorskip("mtoframe_famo")
    pytest.importorskip("mtoframe_nashmtl")
    result, lines = _compare(tmp_path, seeds=3, timing_rounds=3, methods=("famo", "nashmtl"))
    assert {p.name for p in tmp_path.iterdir()} >= {"compare.json", "compare.md", "compare.png", "timing.json", "runs"}
    for stack in ("ew", "famo", "nashmtl"):
        for seed in (0, 1, 2):
            assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "runs" / stack / f"seed{seed}" / "tb").iterdir())
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["split"] == "test" and saved["seeds"] == [0, 1, 2]
    famo = next(s for s in saved["stacks"] if s["stack"] == "famo")
    # the paired statistic is recomputable from the per-seed results it was built from
    runs = saved["runs"]
    dp = [np.mean([np.mean([sgn * (runs["famo"][s]["metrics"][t][m] - runs["ew"][s]["metrics"][t][m])
                            / runs["ew"][s]["metrics"][t][m] * 100
                            for m, sgn in ((m, 1 if d == "higher" else -1) for m, d in ds.items())])
                   for t, ds in saved["directions"].items()]) for s in ("0", "1", "2")]
    assert famo["quality"]["delta_p_task"]["per_seed"] == pytest.approx(dp)
    mean, ci = mean_ci(dp)
    assert famo["quality"]["delta_p_task"]["ci"] == pytest.approx(list(ci))
    assert famo["timing"]["ratio_to_ew"] > 0 and famo["timing"]["peak_mem_mib"] is not None
    md = (tmp_path / "compare.md").read_text()
    assert saved["conclusion"] in md and all(v in md for v in saved["verdicts"])


def test_workers_2_gives_the_numbers_of_workers_1(tmp_path):
    pytest.importorskip("mtoframe_famo")
    one, _ = _compare(tmp_path / "one", workers=1)
    two, _ = _compare(tmp_path / "two", workers=2)
    for stack in ("ew", "famo"):
        for seed in ("0", "1"):
            assert two["runs"][stack][seed]["metrics"] == one["runs"][stack][seed]["metrics"]
    assert two["stacks"] == one["stacks"] and two["verdicts"] == one["verdicts"]


def test_a_run_does_not_depend_on_the_global_rng_it_starts_from(tmp_path):
    """RLW seeds its generator from the global RNG when built (its default): a run must give the
    same numbers whatever ran before it in the process (sequential runs, --workers)."""
    pytest.importorskip("mtoframe_lossweighting")
    import torch

    from mtoframe.compare.runs import RunSpec, train_one

    cfg = load_config(EXAMPLE, TINY)
    got = []
    for dirty in (123, 456):
        torch.manual_seed(dirty)
        got.append(train_one(cfg, RunSpec(("rlw",), 0), tmp_path / str(dirty), threads=1)["metrics"])
    assert got[0] == got[1]


def test_a_killed_compare_continues_without_redoing_finished_runs(tmp_path):
    pytest.importorskip("mtoframe_famo")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mtoframe", "compare", str(EXAMPLE), "--methods", "famo", "--seeds", "3",
           "--timing-rounds", "0", "--threads", "1", "--out", str(out)]
    for s in TINY:
        cmd += ["--set", s]
    cmd += ["--set", "epochs=40"]  # long enough runs that the kill lands mid-way
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while len(list(out.glob("runs/*/*/result.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("runs/*/*/result.json")}
    assert 2 <= len(before) < 6, "the kill must land before the last run finished"
    result, lines = _compare(out, seeds=3, extra=["epochs=40"])
    assert f"{len(before)} of 6 runs already finished in {out / 'runs'}: not redone" in lines
    trained = [ln for ln in lines if ln.startswith("  [")]
    assert len(trained) == 6 - len(before)
    for p, (mtime, text) in before.items():
        assert p.stat().st_mtime_ns == mtime and p.read_text() == text
    assert len(list(out.glob("runs/*/*/result.json"))) == 6 and len(result["runs"]["famo"]) == 3


def test_runs_of_another_budget_are_not_mixed_in(tmp_path):
    pytest.importorskip("mtoframe_famo")
    _compare(tmp_path, seeds=1)
    with pytest.raises(OptionError, match="holds runs of another config or budget"):
        _compare(tmp_path, seeds=1, extra=["epochs=2"])


def test_bad_stacks_and_factories_fail_before_training(tmp_path, capsys):
    pytest.importorskip("mtoframe_famo")
    assert main(["compare", str(EXAMPLE), "--methods", "famo,nosuchmethod", "--seeds", "1",
                 "--out", str(tmp_path / "a")]) == 2
    assert "nosuchmethod" in capsys.readouterr().err
    assert not (tmp_path / "a" / "runs").exists()
    assert main(["compare", str(EXAMPLE), "--methods", "famo", "--seeds", "1", "--out", str(tmp_path / "b"),
                 "--set", 'data.factory="weather_mtl.data:make_nothing"']) == 2
    err = capsys.readouterr().err
    assert "[data] factory = 'weather_mtl.data:make_nothing': 'weather_mtl.data' has no attribute 'make_nothing'" in err


def _rank_worker(rank: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        result, _ = _compare(Path(out), seeds=1, timing_rounds=2)
        Path(f"{out}.rank{rank}").write_text(json.dumps(result is None))
    finally:
        dist.destroy_process_group()


def test_under_torch_distributed_ranks_train_each_run_together_and_rank_0_writes(tmp_path):
    pytest.importorskip("mtoframe_famo")
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.start_processes(_rank_worker, args=(port, str(out)), nprocs=2, join=True, start_method="fork")
    assert json.loads(Path(f"{out}.rank0").read_text()) is False  # rank 0 summarised
    assert json.loads(Path(f"{out}.rank1").read_text()) is True   # rank 1 trained, wrote nothing
    single, _ = _compare(tmp_path / "single", seeds=1)
    ddp = json.loads((out / "compare.json").read_text())
    assert next(s for s in ddp["stacks"] if s["stack"] == "famo")["timing"]["ratio_to_ew"] > 0
    # as under `mtoframe train`, every rank steps on the same batches: the union batch's mean loss
    # is each rank's, so the runs equal the single-process ones within float tolerance
    for stack in ("ew", "famo"):
        for task, ms in single["runs"][stack]["0"]["metrics"].items():
            assert ddp["runs"][stack]["0"]["metrics"][task] == pytest.approx(ms, rel=1e-4, abs=1e-5)


def test_a_metric_undefined_on_a_seed_is_named_and_gets_no_verdict():
    ew = [(1.0, 0.5), (float("nan"), 0.6), (1.1, 0.55)]
    quality, excluded = summary.quality_vs_ew(_doctored({"ew": ew, "x": [(0.5, 0.6), (0.4, 0.7), (0.6, 0.65)]}),
                                              DIRECTIONS)
    assert excluded == ["a/err"]
    err = quality["x"]["metrics"]["a"]["err"]
    assert np.isnan(err["mean"]) and err["verdict"] == "no difference"
    # Δp_task rests on b/acc alone: +20, +16.7, +18.2 % on the three seeds
    assert quality["x"]["delta_p_task"]["per_seed"] == pytest.approx([20.0, 100 / 6, 100 * 0.1 / 0.55])
