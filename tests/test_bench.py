"""``mtoframe bench``: the timing statistics on fixed inputs, the interleaving, and a smoke run
of ``bench --quick`` at tiny sizes producing a well-formed results.json."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import mtoframe
from mtoframe.bench import timing
from mtoframe.bench.quality import mean_ranks
from mtoframe.bench.workloads import default_stacks, parse_stacks
from mtoframe.errors import MtoError


def test_quantiles_median_iqr():
    xs = [float(v) for v in (7, 1, 10, 3, 2, 9, 4, 8, 6, 5)]
    assert timing.median(xs) == 5.5
    assert timing.quantile(xs, 0.25) == 3.25 and timing.quantile(xs, 0.75) == 7.75
    assert timing.iqr(xs) == 4.5
    assert timing.median([3.0]) == 3.0 and timing.iqr([3.0]) == 0.0
    with pytest.raises(MtoError):
        timing.median([])


def test_block_mean_carries_periodic_work_that_the_median_hides():
    # a method that solves every 4th step: 1 ms, 1, 1, 9, ...
    xs = [1.0, 1.0, 1.0, 9.0] * 5 + [100.0]  # plus a stray slow step (partial block, dropped)
    assert timing.median(xs) == 1.0
    assert timing.block_mean(xs, 4) == 3.0
    assert timing.block_mean(xs, 1) == timing.median(xs)
    # one block spoiled by an outlier does not move the median over blocks
    ys = [1.0, 1.0, 1.0, 9.0] * 4 + [1.0, 1.0, 1.0, 500.0]
    assert timing.block_mean(ys, 4) == 3.0
    assert timing.block_mean([2.0, 4.0], 5) == 3.0  # fewer than a block: plain mean
    s = timing.summarise_times(xs, 4)
    assert s["median_ms"] == 1.0 and s["block_mean_ms"] == 3.0 and s["n"] == 21


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
    assert all(len(v) == 6 for v in times.values())
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


def test_bench_quick_smoke(tmp_path, monkeypatch, one_thread):
    from mtoframe.cli import main

    monkeypatch.setenv("MTOFRAME_CACHE", str(tmp_path / "cache"))
    extra = [n for n in ("pcgrad", "mgda", "nashmtl") if n in mtoframe.available()][:1]
    methods = ",".join(["ew"] + extra + (["repmtl+" + extra[0]] if extra and "repmtl" in mtoframe.available() else []))
    rc = main(["bench", *TINY, "--methods", methods, "--out", str(tmp_path / "out")])
    assert rc == 0
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert isinstance(records, list) and sorted(r["stack"] for r in records) == sorted(methods.split(","))
    for r in records:
        assert r["error"] is None
        assert len(r["times_ms"]) == 4 and r["median_ms"] > 0 and r["block"] >= 1
        assert r["environment"]["torch"] == torch.__version__
        assert r["workload"]["name"] == "scenes"
        assert r["ratio_to_ew"] == pytest.approx(r["block_mean_ms"] / next(x for x in records if x["stack"] == "ew")["block_mean_ms"])
    ew = next(r for r in records if r["stack"] == "ew")
    assert ew["ratio_to_ew"] == 1.0 and ew["ratio_to_ew_median"] == 1.0
    for r in records:
        assert r["peak_mem_mib"] > 0 and "profiler" in r["mem_method"]
    if extra:  # per-task gradients: at least the T×P matrix more than EW
        assert next(x for x in records if x["stack"] == extra[0])["peak_mem_mib"] > ew["peak_mem_mib"]
    assert "peak MiB" in (tmp_path / "out" / "results.md").read_text().splitlines()[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    tb.Reload()
    assert "bench/peak_mem_mib/ew" in tb.Tags()["scalars"]
    assert (tmp_path / "out" / "results.md").read_text().startswith("| stack |")
    assert any((tmp_path / "out" / "tensorboard").iterdir())


def test_bench_manytask(tmp_path, one_thread):
    from mtoframe.cli import main

    rc = main(["bench", "--quick", "--tasks", "5", "--batch", "8", "--rounds", "3", "--warmup", "1", "--threads", "1",
               "--methods", "ew", "--no-memory", "--out", str(tmp_path)])
    assert rc == 0
    (rec,) = json.loads((tmp_path / "results.json").read_text())
    assert rec["workload"]["tasks"] == 5 and rec["peak_mem_mib"] is None


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
