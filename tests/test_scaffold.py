"""``mtoframe new-plugin``: the scaffolded distribution imports, registers and passes its own tests."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mtoframe
from mtoframe.commands import new_plugin
from mtoframe.scaffold import scaffold
from mtoframe.testing.conformance import check_method


def _run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    new_plugin.add_parser(parser.add_subparsers(dest="command"))
    return new_plugin.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("scaffold")
    assert _run_command(["new-plugin", "demo", "--dir", str(base)]) == 0
    return base / "mtoframe-demo"


def test_layout(generated):
    files = sorted(str(p.relative_to(generated)) for p in generated.rglob("*") if p.is_file())
    assert files == [
        "README.md", "pyproject.toml", "src/mtoframe_demo/__init__.py", "src/mtoframe_demo/demo.py",
        "src/mtoframe_demo/py.typed", "tests/test_conformance.py", "tests/test_demo.py",
    ]
    pyproject = (generated / "pyproject.toml").read_text()
    assert 'name = "mtoframe-demo"' in pyproject and '[project.entry-points.mtoframe]\ndemo = "mtoframe_demo"' in pyproject
    assert "torch" not in pyproject  # the core brings torch; a plugin must not pin it


def test_generated_module_imports_and_conforms(generated, monkeypatch):
    monkeypatch.syspath_prepend(str(generated / "src"))
    try:
        pkg = importlib.import_module("mtoframe_demo")
        assert pkg.MTOFRAME_HOOK_API == ">=1,<2"
        assert pkg.Demo.name == "demo" and "d = " in sys.modules["mtoframe_demo.demo"].__doc__
        assert check_method(pkg.Demo).ok
        with pytest.raises(mtoframe.OptionError, match="space"):
            pkg.Demo(space="pixels")
    finally:
        for mod in [m for m in sys.modules if m.startswith("mtoframe_demo")]:
            del sys.modules[mod]


def test_refuses_bad_names_and_overwrites(generated):
    for bad in ("Demo", "my-method", "my_method", "1x", ""):
        with pytest.raises(mtoframe.MtoError, match="lower-case"):
            scaffold(bad, generated.parent)
    with pytest.raises(mtoframe.MtoError, match="already exists"):
        scaffold("demo", generated.parent)


def test_installs_with_entry_point_and_its_tests_pass(generated, tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(generated)],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stderr
    [info] = target.glob("mtoframe_demo-0.1.0.dist-info")
    assert "[mtoframe]\ndemo = mtoframe_demo" in (info / "entry_points.txt").read_text()
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("MTOFRAME_PLUGINS", None)
    env.pop("MTOFRAME_DISABLE_PLUGIN_AUTOLOAD", None)
    # -p no:cacheprovider: leave the generated tree untouched; -rs lists skips so none hides
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(generated / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "skipped" not in tests.stdout  # the entry-point test ran: the distribution is installed
    assert " passed" in tests.stdout
