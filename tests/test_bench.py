"""``mtoframe bench``: the timing statistics on fixed inputs, the interleaving, and a smoke run
of ``bench --quick`` at tiny sizes producing a well-formed results.json."""

from __future__ import annotations

import json
import statistics
import sys
import time

import pytest
import torch

import mtoframe
from mtoframe.bench import stats, timing
from mtoframe.bench.quality import mean_ranks
from mtoframe.bench.workloads import default_stacks, parse_stacks
from mtoframe.errors import MtoError


def test_summarise_times_quantiles_median_iqr():
    xs = [float(v) for v in (7, 1, 10, 3, 2, 9, 4, 8, 6, 5)]
    s = stats.summarise_times(xs)
    assert s["median_ms"] == 5.5 and s["q25_ms"] == 3.25 and s["q75_ms"] == 7.75 and s["iqr_ms"] == 4.5
    assert s["mean_ms"] == 5.5 and s["min_ms"] == 1.0 and s["n"] == 10
    assert stats.summarise_times([3.0])["iqr_ms"] == 0.0
    with pytest.raises(MtoError):
        stats.summarise_times([])


def test_a_round_times_a_whole_update_period_so_periodic_work_is_in_every_round():
    # a method that does 2 ms of extra work every 3rd step: one step per round (the old timing)
    # would put it in a third of the rounds, and the median over rounds would hide it
    calls = {"n": 0}

    def step():
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            time.sleep(0.002)

    times = timing.run_interleaved([timing.Contender("m", step, period=3)], rounds=6, warmup=1)
    assert calls["n"] == 3 * 7
    assert min(times.wall["m"]) >= 2.0 / 3  # ms per step: every round holds one slow step


def test_cpu_time_leaves_out_waiting():
    times = timing.run_interleaved([timing.Contender("sleep", lambda: time.sleep(0.02))], rounds=3, warmup=0)
    assert min(times.wall["sleep"]) >= 20.0
    assert max(times.cpu["sleep"]) < 10.0


def test_warm_steps_run_right_before_each_timed_step_and_are_not_timed():
    # the untimed steps are slow, the timed ones fast: any untimed step in the timing would show
    calls: list[str] = []
    slow = {"a": True, "b": True}

    def step(name):
        calls.append(name)
        if slow[name]:
            time.sleep(0.02)
        slow[name] = not slow[name]

    cs = [timing.Contender(n, (lambda n=n: step(n))) for n in "ab"]
    times = timing.run_interleaved(cs, rounds=4, warmup=1, warm_steps=1)
    assert len(calls) == 2 * 2 * 5
    # each contender's two steps of a round run back to back: its timed step follows its own
    assert all(calls[i] == calls[i + 1] for i in range(0, len(calls), 2))
    assert all(len(v) == 4 and max(v) < 10.0 for v in times.wall.values())
    # a whole update period per warm step, as for the timed steps
    n = {"calls": 0}
    p = timing.Contender("p", lambda: n.__setitem__("calls", n["calls"] + 1), period=3)
    timing.run_interleaved([p], rounds=2, warmup=0, warm_steps=2)
    assert n["calls"] == 2 * (2 + 1) * 3
    with pytest.raises(MtoError, match="warm_steps must be >= 0"):
        timing.run_interleaved([p], rounds=2, warmup=0, warm_steps=-1)


def test_run_speed_builds_an_untimed_ew_trainer_before_the_timed_ones(monkeypatch):
    # the first trainer a process builds steps slower than later copies, and EW is every ratio's
    # denominator: EW must not be the first built
    from mtoframe.bench import speed
    from mtoframe.bench.workloads import manytask_workload

    events: list[tuple[str, object]] = []
    real = speed.stack_contender

    def recording(workload, stack, **kw):
        c = real(workload, stack, **kw)
        label = kw.get("name") or "+".join(stack)
        events.append(("built", label))
        inner = c.step
        c.step = lambda: (events.append(("step", label)), inner())[1]
        return c

    monkeypatch.setattr(speed, "stack_contender", recording)
    w = manytask_workload(tasks=3, batch=8)
    records = speed.run_speed(w, [["ew"]], speed.SpeedConfig(rounds=2, warmup=0, memory=False))
    assert events[:3] == [("built", "ew"), ("step", "ew"), ("built", "ew")]
    assert [r["stack"] for r in records] == ["ew", "ew#2"]  # the untimed one has no record
    assert all(len(r["rounds"]) == 2 for r in records)


def test_update_period_reads_every_options():
    class Opt:
        pass

    import attrs

    @attrs.frozen
    class O:
        update_weights_every: int = 7
        other: int = 3

    class M:
        options = O()

    assert timing.update_period([M()]) == 7
    assert timing.update_period([mtoframe.create("ew")]) == 1


def test_interleaving_runs_each_contender_once_per_round_in_shuffled_orders():
    calls: list[str] = []
    cs = [timing.Contender(n, (lambda n=n: calls.append(n))) for n in "abcd"]
    times = timing.run_interleaved(cs, rounds=6, warmup=2, seed=3)
    assert all(len(v) == 6 for v in times.wall.values()) and all(len(v) == 6 for v in times.cpu.values())
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1


def test_allocation_peak_is_the_running_sum_maximum():
    assert timing.allocation_peak([4, 8, -4, 2, -10]) == 12
    assert timing.allocation_peak([-5, 3]) == 0  # a free of an earlier tensor, then less than it back
    assert timing.allocation_peak([]) == 0


def test_peak_memory_counts_tensors_alive_together_not_the_total_allocated():
    n = 2**20  # 4 MiB of float32

    def step():
        x = torch.ones(n)
        y = x * 2
        del x
        z = y + 1  # x is freed before z exists: two 4 MiB tensors at most are alive at once
        return float(z.sum())

    sizes = timing.cpu_allocations(step)
    assert sum(s for s in sizes if s > 0) >= 3 * 4 * n
    mib, how = timing.peak_memory(step, device=torch.device("cpu"), repeats=2)
    assert 8.0 <= mib < 8.1, (mib, how)
    # measured inside the interleaved run (last warm-up round) instead of in a separate pass
    keep = {}

    def step_keeping_grad_like_state():  # frees the previous call's tensor, as a trainer frees .grad
        keep["prev"] = None
        keep["prev"] = torch.ones(n // 4)  # 1 MiB alive between steps
        return step()

    times = timing.run_interleaved([timing.Contender("a", step), timing.Contender("b", step_keeping_grad_like_state)],
                                   rounds=1, warmup=0, memory=True)
    assert 8.0 <= times.peak_mib["a"] < 8.1 and times.mem_method == how
    separate, _ = timing.peak_memory(step_keeping_grad_like_state, device=torch.device("cpu"))
    assert times.peak_mib["b"] == pytest.approx(separate) and 8.0 <= separate < 8.1  # the free of "prev" is seen


def _step_peak(method, *, batch: int, width: int = 256) -> tuple[float, int, int]:
    """Peak MiB of an Adam step on a one-layer encoder whose parameters dominate its
    activations, the number of tasks and of shared parameters."""
    from mtoframe.model import MultiTaskModel
    from mtoframe.testing.factories import make_trainer

    torch.manual_seed(0)
    model = MultiTaskModel(encoder=torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh()),
                           heads={t: torch.nn.Linear(width, 1) for t in "abc"})
    trainer = make_trainer([method], model=model, optimizer="adam", lr=1e-3)
    data = (torch.randn(batch, width), {t: torch.randn(batch, 1) for t in "abc"})
    trainer.step(data)  # Adam's lazy state is not part of a step's peak
    mib, _ = timing.peak_memory(lambda: trainer.step(data), device=torch.device("cpu"), repeats=2)
    return mib, len(trainer.tasks), sum(p.numel() for p in trainer.model.shared_parameters())


def test_peak_memory_of_a_training_step_grows_with_the_batch_and_holds_the_gradient_matrix(one_thread):
    from helpers import ScaledSum

    small, _, P = _step_peak(mtoframe.create("ew"), batch=2)
    large, _, _ = _step_peak(mtoframe.create("ew"), batch=256)
    # the batch's activations (256×width float32 at least) are alive during the backward
    assert (large - small) * 2**20 >= 0.9 * (256 - 2) * 256 * 4, (small, large)
    assert small * 2**20 >= P * 4  # the new .grad tensors
    # a gradient aggregator holds the T×P float32 matrix of per-task gradients on top of what EW holds
    agg, T, P = _step_peak(ScaledSum(), batch=2)
    assert (agg - small) * 2**20 >= T * P * 4, (agg, small, T, P)


def test_stack_parsing_and_defaults():
    assert parse_stacks("ew, repmtl+nashmtl ,,cagrad") == [["ew"], ["repmtl", "nashmtl"], ["cagrad"]]
    st = default_stacks(["ew", "repmtl", "nashmtl", "famo"])
    assert st[0] == ["ew"] and ["repmtl", "nashmtl"] in st and ["repmtl", "famo"] in st
    assert ["repmtl", "cagrad"] not in st


def test_mean_ranks_with_ties():
    res = {"a": {"t": {"acc": 0.9, "err": 1.0}}, "b": {"t": {"acc": 0.8, "err": 1.0}}, "c": {"t": {"acc": 0.7, "err": 0.5}}}
    r = mean_ranks(res, {"t": {"acc": "higher", "err": "lower"}})
    assert r == {"a": (1 + 2.5) / 2, "b": (2 + 2.5) / 2, "c": (3 + 1) / 2}


TINY = ["--quick", "--size", "16", "--batch", "4", "--width", "4", "--rounds", "4", "--warmup", "1", "--threads", "1"]


def per_round_cpu(r, ew):
    return [x["cpu_ms"] / e["cpu_ms"] for x, e in zip(r["rounds"], ew["rounds"])]


def test_headline_clock():
    from mtoframe.bench.speed import headline_clock

    assert headline_clock(torch.device("cpu"), 1) == "cpu"
    assert headline_clock(torch.device("cpu"), 2) == "wall"  # CPU time would sum the threads
    assert headline_clock(torch.device("cuda"), 1) == "wall"  # CPU time misses the kernels


def test_bench_quick_smoke(tmp_path, monkeypatch, one_thread):
    from mtoframe.cli import main

    monkeypatch.setenv("MTOFRAME_CACHE", str(tmp_path / "cache"))
    extra = [n for n in ("pcgrad", "mgda", "nashmtl") if n in mtoframe.available()][:1]
    methods = ",".join(["ew"] + extra + (["repmtl+" + extra[0]] if extra and "repmtl" in mtoframe.available() else []))
    rc = main(["bench", *TINY, "--methods", methods, "--out", str(tmp_path / "out")])
    assert rc == 0
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert isinstance(records, list)
    assert sorted(r["stack"] for r in records) == sorted(methods.split(",") + ["ew#2"])
    ew = next(r for r in records if r["stack"] == "ew")
    for r in records:
        assert r["error"] is None
        assert len(r["rounds"]) == 4 and r["ms_median"] > 0 and r["cpu_ms_median"] > 0
        assert r["environment"]["torch"] == torch.__version__
        assert r["workload"]["name"] == "scenes"
        # the headline is the median of the per-round paired ratios, kept raw in the file; one
        # thread on CPU: its clock is process CPU time, wall time is beside it
        assert r["run"]["headline"] == "cpu"
        for clock in ("cpu", "wall"):
            per_round = [x[f"{clock}_ms"] / e[f"{clock}_ms"] for x, e in zip(r["rounds"], ew["rounds"])]
            assert r[f"ratio_to_ew_{clock}"] == pytest.approx(statistics.median(per_round))
            low, high = r[f"ratio_to_ew_{clock}_ci"]
            assert min(per_round) <= low <= r[f"ratio_to_ew_{clock}"] <= high <= max(per_round)
        assert [x["ratio_to_ew"] for x in r["rounds"]] == pytest.approx(per_round_cpu(r, ew))
        assert (r["ratio_to_ew"], r["ratio_to_ew_ci"]) == (r["ratio_to_ew_cpu"], r["ratio_to_ew_cpu_ci"])
        assert isinstance(r["noise"], list)
    assert ew["ratio_to_ew"] == 1.0 and ew["ratio_to_ew_ci"] == [1.0, 1.0]
    assert next(r for r in records if r["stack"] == "ew#2")["kind"] == "reference"
    for r in records:
        assert r["peak_mem_mib"] > 0 and "profiler" in r["mem_method"]
    if extra:  # per-task gradients: at least the T×P matrix more than EW
        assert next(x for x in records if x["stack"] == extra[0])["peak_mem_mib"] > ew["peak_mem_mib"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.startswith("| stack |") and "× EW CPU (headline)" in md.splitlines()[0] and "peak MiB" in md.splitlines()[0]
    assert "noise check: EW against itself" in md
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    tb.Reload()
    assert "bench/peak_mem_mib/ew" in tb.Tags()["scalars"] and "bench/ratio_to_ew_cpu/ew" in tb.Tags()["scalars"]
    assert any((tmp_path / "out" / "tensorboard").iterdir())


def test_bench_manytask(tmp_path, one_thread):
    from mtoframe.cli import main

    rc = main(["bench", "--quick", "--tasks", "5", "--batch", "8", "--rounds", "3", "--warmup", "1", "--threads", "1",
               "--methods", "ew", "--no-memory", "--out", str(tmp_path)])
    assert rc == 0
    rec, again = json.loads((tmp_path / "results.json").read_text())
    assert rec["stack"] == "ew" and again["stack"] == "ew#2"
    assert rec["workload"]["tasks"] == 5 and rec["peak_mem_mib"] is None


@pytest.mark.parametrize("bad", ["file", "file/sub"])
def test_out_that_cannot_be_written_fails_first_with_a_clear_error(tmp_path, monkeypatch, capsys, bad):
    from mtoframe.cli import main

    (tmp_path / "file").write_text("not a directory")
    cache = tmp_path / "cache"
    monkeypatch.setenv("MTOFRAME_CACHE", str(cache))
    for extra in ([], ["--quality"]):
        assert main(["bench", *TINY, *extra, "--methods", "ew", "--out", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert f"--out {tmp_path / bad}" in err and "not a directory" in err
    assert not cache.exists()  # failed before generating any data


def test_out_is_created_with_its_parents_before_the_run(tmp_path, monkeypatch):
    from mtoframe.bench import report

    assert report.writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())  # probe removed
    monkeypatch.setattr("tempfile.mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(MtoError, match="not writable"):
        report.writable_dir(tmp_path / "a" / "b")


@pytest.mark.parametrize(("flag", "value", "says"), [("--rounds", "1", "--rounds must be >= 2"),
                                                     ("--warm-steps", "-1", "--warm-steps must be >= 0")])
def test_bad_timing_counts_are_refused_before_any_work(tmp_path, monkeypatch, capsys, flag, value, says):
    from mtoframe.cli import main

    cache = tmp_path / "cache"
    monkeypatch.setenv("MTOFRAME_CACHE", str(cache))
    assert main(["bench", *TINY, flag, value, "--methods", "ew", "--out", str(tmp_path / "out")]) == 2
    assert says in capsys.readouterr().err
    assert not cache.exists()


def test_unknown_method_is_an_error(tmp_path, monkeypatch, capsys):
    from mtoframe.cli import main

    monkeypatch.setenv("MTOFRAME_CACHE", str(tmp_path / "cache"))
    assert main(["bench", *TINY, "--methods", "ew,nosuchmethod", "--out", str(tmp_path)]) == 2
    assert "nosuchmethod" in capsys.readouterr().err


def test_peers_torchjd_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from mtoframe.cli import main

    monkeypatch.setitem(sys.modules, "torchjd", None)  # import torchjd -> ImportError
    assert main(["bench", *TINY, "--peers", "torchjd", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "TorchJD" in err and "pip install" in err


def test_peers_torchjd(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("torchjd.autojac")
    from mtoframe.cli import main

    monkeypatch.setenv("MTOFRAME_CACHE", str(tmp_path / "cache"))
    methods = ",".join(["ew"] + [n for n in ("upgrad", "pcgrad") if n in mtoframe.available()])
    assert main(["bench", *TINY, "--no-memory", "--methods", methods, "--peers", "torchjd", "--out", str(tmp_path)]) == 0
    records = {r["stack"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert "torchjd:ew" in records and records["torchjd:ew"]["kind"] == "torchjd"
    assert records["torchjd:ew"]["error"] is None and records["torchjd:ew"]["ratio_to_ew"] > 0
