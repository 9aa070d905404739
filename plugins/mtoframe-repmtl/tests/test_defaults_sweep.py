"""The selection rule and the option handling of ``scripts/defaults_sweep.py`` (the measurement
behind the shipped defaults): best mean val ``vs_ew`` among settings not significantly worse than
EW on any dataset, never reading the test split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "defaults_sweep", Path(__file__).parents[1] / "scripts" / "defaults_sweep.py")
sweep = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sweep)


def _record(stack: str, val: tuple[float, float, float], test: tuple[float, float, float]) -> dict:
    return {"stack": stack, "vs_ew": test[0], "vs_ew_ci": [test[1], test[2]],
            "val": {"vs_ew": val[0], "vs_ew_ci": [val[1], val[2]]}}


def _write(path: Path, dataset: str, records: list[dict]) -> Path:
    path.write_text(json.dumps({"dataset": dataset, "records": [_record("ew", (0, 0, 0), (0, 0, 0)), *records]}))
    return path


def test_select_takes_best_mean_val_among_settings_not_worse_on_any_dataset(tmp_path, capsys) -> None:
    a, b, c = "repmtl(tau=1.0)", "repmtl(tau=2.0)", "repmtl(tau=0.5)"
    mm = _write(tmp_path / "mm.json", "multimnist", [
        _record(a, (+3.0, +1.0, +5.0), (+3.0, +1.0, +5.0)),   # best mean, but worse than EW on scenes
        _record(b, (-1.0, -2.0, +0.5), (+9.0, +8.0, +10.0)),  # the test split must not matter
        _record(c, (-0.5, -1.5, +0.5), (-9.0, -10.0, -8.0)),
    ])
    sc = _write(tmp_path / "sc.json", "scenes", [
        _record(a, (-1.0, -2.0, -0.1), (0.0, -1.0, 1.0)),
        _record(b, (-1.0, -2.0, +0.5), (0.0, -1.0, 1.0)),
        _record(c, (-0.7, -1.5, +0.5), (0.0, -1.0, 1.0)),
        _record("repmtl(tau=9.0)", (+9.0, +8.0, +10.0), (0.0, -1.0, 1.0)),  # not run on multimnist
    ])
    sweep.select([mm, sc])
    out = capsys.readouterr().out
    assert "no: worse than EW on scenes" in out
    assert "| repmtl(tau=9.0) |" in out and "not run on every dataset" in out
    assert out.strip().splitlines()[-1].endswith(f"{c} (-0.60)")


def test_grid_ties_lambdas_and_adds_fixed_options() -> None:
    stacks = sweep.grid([0.5, 2.0], [0.1], sweep.parse_fixed(["positive_in_denominator=true", "negatives=task"]))
    assert stacks == [[("repmtl", {"tau": t, "lambda_tsr": 0.1, "lambda_csa": 0.1,
                                   "positive_in_denominator": True, "negatives": "task"})] for t in (0.5, 2.0)]


def test_parse_fixed_rejects_a_pair_without_value() -> None:
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        sweep.parse_fixed(["positive_in_denominator"])
