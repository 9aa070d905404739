"""``mtoframe train``: end to end on tiny configs, resume, and config error messages."""

from __future__ import annotations

import json

import pytest
import torch

from mtoframe.cli import main
from mtoframe.commands.train import train
from mtoframe.config import RunConfig, parse_config, load_config
from mtoframe.errors import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")


MANYTASK = """
epochs = 2
batch_size = 8
seed = 1
methods = []
[data]
name = "manytask"
num_tasks = 3
n_train = 24
n_val = 8
d_in = 6
[model]
d_rep = 4
[optimizer]
name = "sgd"
lr = 0.05
"""


def _write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_scenes_end_to_end_prints_metrics_and_logs(tmp_path, capsys):
    cfg = _write(tmp_path, f"""
epochs = 1
batch_size = 4
log_dir = "{(tmp_path / 'run').as_posix()}"
log_every = 1
[data]
name = "scenes"
n_train = 6
n_val = 3
size = 16
cache_dir = "{(tmp_path / 'cache').as_posix()}"
[model]
width = 2
""")
    hist = tmp_path / "history.json"
    assert main(["train", str(cfg), "--history", str(hist)]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "miou=" in out and "abs_err=" in out and "within_11.25=" in out
    history = json.loads(hist.read_text())
    assert len(history) == 1 and set(history[0]["val"]) == {"segmentation", "depth", "normal"}
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == history
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run").rglob("*"))


def test_manytask_overrides_and_task_subset(tmp_path):
    cfg = load_config(_write(tmp_path, MANYTASK), ["optimizer.lr=0.01", 'tasks=["t2"]', "data.correlation=0.2"])
    assert cfg.optimizer.lr == 0.01 and cfg.tasks == ("t2",) and cfg.data.correlation == 0.2
    history = train(cfg)
    assert len(history) == 2 and list(history[-1]["val"]) == ["t2"]
    assert history[-1]["train_loss"]["t2"] < history[0]["train_loss"]["t2"] * 1.5


def test_methods_from_config_reach_the_trainer(tmp_path, capsys):
    cfg = _write(tmp_path, MANYTASK.replace("methods = []", 'methods = ["ew"]'))
    assert main(["train", str(cfg), "--set", "epochs=1"]) == 0
    assert "training ew on manytask" in capsys.readouterr().out


def test_resume_continues_identically(tmp_path):
    straight = train(load_config(_write(tmp_path, MANYTASK)))
    ckpt = (tmp_path / "ck.pt").as_posix()
    first = train(load_config(_write(tmp_path, MANYTASK), ["epochs=1", f'checkpoint="{ckpt}"']))
    resumed = train(load_config(_write(tmp_path, MANYTASK), [f'checkpoint="{ckpt}"']), resume=True)
    assert len(first) == 1 and len(resumed) == 2
    assert resumed[1]["train_loss"] == straight[1]["train_loss"]
    assert resumed[1]["val"] == straight[1]["val"]


@pytest.mark.parametrize(("text", "overrides", "match"), [
    ("epochs = 1\nepoch = 2\n", [], r"unknown key\(s\) \['epoch'\] in the run config; allowed: data, model"),
    ("[data]\nname = 'scenes'\nsizes = 3\n", [], r"unknown key\(s\) \['sizes'\] in \[data\]; allowed: name, path"),
    ("[data]\nname = 'imagenet'\n", [], r"'name' of \[data\] must be one of 'scenes', 'manytask', 'nyuv2', 'cityscapes'"),
    ("[optimizer]\nlr = -1.0\n", [], r"'lr' of \[optimizer\] must be a number in \(0.0, inf\)"),
    ("[optimizer]\nname = 'rmsprop'\n", [], r"must be one of 'adam', 'sgd'"),
    ("epochs = 0\n", [], r"'epochs' of the run config must be an integer in \[1, inf\]"),
    ("nonfinite = 'ignore'\n", [], r"'nonfinite'.*one of 'raise', 'skip'"),
    ("methods = [3]\n", [], r"methods\[0\] must be a method name"),
    ("methods = [{ name = 'cagrad', opts = {} }]\n", [], r"allowed keys: name, options"),
    ("[data]\nname = 'nyuv2'\n", [], r"needs path"),
    ("epochs = 1\nseed = = 2\n", [], r"not valid TOML.*at line 2"),
    ("epochs = 1\nmethods = [\n", [], r"not valid TOML: .*end of document.*line 2 is the last"),
    ("data = 3\n", [], r"\[data\] must be a table"),
    ("", ["epochs"], r"--set expects key=value"),
    ("", ["epochs=two"], r"'epochs'.*got 'two'"),
])
def test_config_errors_name_the_key_and_the_allowed_values(text, overrides, match):
    with pytest.raises(OptionError, match=match):
        parse_config(text, overrides)


def test_defaults_and_cli_error_exit(tmp_path, capsys):
    cfg = parse_config("")
    assert isinstance(cfg, RunConfig) and cfg.data.name == "scenes" and cfg.optimizer.name == "adam"
    bad = _write(tmp_path, "[optimizer]\nlr = 'fast'\n")
    assert main(["train", str(bad)]) == 2
    assert "lr" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    with pytest.raises(OptionError, match="does not have"):
        train(parse_config(MANYTASK, ['tasks=["t7"]']))
    with pytest.raises(OptionError, match="--resume needs checkpoint"):
        train(parse_config(MANYTASK), resume=True)
    assert torch.get_default_dtype() == torch.float32


def test_office_multi_input_end_to_end(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    for domain, n in (("amazon", 4), ("webcam", 2)):
        for split in ("train", "val"):
            lines = []
            for i in range(n):
                rel = f"{domain}/{split}{i}.npy"
                (tmp_path / domain).mkdir(exist_ok=True)
                np.save(tmp_path / rel, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                lines.append(f"{rel} {i % 3}")
            (tmp_path / f"{domain}_{split}.txt").write_text("\n".join(lines))
    cfg = _write(tmp_path, f"""
epochs = 1
batch_size = 2
tasks = ["amazon", "webcam"]
[data]
name = "office31"
path = "{tmp_path.as_posix()}"
image_size = 16
""")
    hist = tmp_path / "h.json"
    assert main(["train", str(cfg), "--history", str(hist)]) == 0
    assert "training ew on office31 (6 train / 6 val)" in capsys.readouterr().out
    val = json.loads(hist.read_text())[0]["val"]
    assert set(val) == {"amazon", "webcam"} and all(0.0 <= v["acc"] <= 1.0 for v in val.values())
    with pytest.raises(OptionError, match=r"'tasks' names \['Clipart'\].*allowed: \['amazon', 'dslr', 'webcam'\]"):
        train(parse_config(cfg.read_text(), ['tasks=["Clipart"]']))
    with pytest.raises(OptionError, match=r"no image list .*dslr_train.txt.*lists present"):
        train(parse_config(cfg.read_text(), ['tasks=["dslr"]']))


def test_example_configs_parse():
    from pathlib import Path

    from mtoframe.config import load_config

    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        cfg = load_config(path)
        assert cfg.epochs >= 1 and cfg.methods
