"""``mtoframe new-plugin``: the scaffolded distribution imports, registers and passes its own tests."""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import mtoframe
from mtoframe.commands import new_plugin
from mtoframe.scaffold import scaffold


def _run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    new_plugin.add_parser(parser.add_subparsers(dest="command"))
    return new_plugin.run(parser.parse_args(argv))


@pytest.fixture(scope="module", params=[False, True], ids=["stateless", "stateful"])
def generated(request, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("scaffold")
    flags = ["--stateful"] if request.param else []
    assert _run_command(["new-plugin", "demo", "--dir", str(base), "--author", "Ada Lovelace <ada@example.org>",
                         *flags]) == 0
    return base / "mtoframe-demo"


def test_layout(generated):
    files = sorted(str(p.relative_to(generated)) for p in generated.rglob("*") if p.is_file())
    assert files == [
        "LICENSE", "README.md", "constraints.txt", "pyproject.toml", "src/mtoframe_demo/__init__.py",
        "src/mtoframe_demo/demo.py", "src/mtoframe_demo/py.typed", "tests/test_conformance.py", "tests/test_demo.py",
    ]
    pyproject = tomllib.loads((generated / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["name"] == "mtoframe-demo" and project["entry-points"]["mtoframe"] == {"demo": "mtoframe_demo"}
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert project["authors"] == [{"name": "Ada Lovelace", "email": "ada@example.org"}]
    assert "Ada Lovelace" in (generated / "LICENSE").read_text().splitlines()[2]
    assert not any("torch" in d for d in project["dependencies"])  # the core brings torch; a plugin must not pin it
    assert "--import-mode=importlib" in pyproject["tool"]["pytest"]["ini_options"]["addopts"]
    # constraints.txt pins the torch installed here, so installing the plugin never fetches another
    assert (generated / "constraints.txt").read_text().splitlines()[-1] == f"torch=={metadata.version('torch')}"


def test_readme_has_no_unfilled_template_field_and_its_example_options_exist(generated):
    readme = (generated / "README.md").read_text()
    assert "https://" not in readme and "@" not in readme.replace("@example", "")
    [options] = re.findall(r'methods=\[\("demo", (\{.*?\})\)\]', readme)
    module = _import_generated(generated)
    assert module.Demo(**ast.literal_eval(options)).options  # every option it shows is an option of the example


def _import_generated(root: Path):
    sys.path.insert(0, str(root / "src"))
    try:
        for mod in [m for m in sys.modules if m.startswith("mtoframe_demo")]:
            del sys.modules[mod]
        return importlib.import_module("mtoframe_demo")
    finally:
        sys.path.remove(str(root / "src"))


def test_next_line_installs_the_test_extra_with_torch_pinned(tmp_path, capsys):
    assert _run_command(["new-plugin", "nxt", "--dir", str(tmp_path / "a dir")]) == 0
    root = tmp_path / "a dir" / "mtoframe-nxt"
    [line] = [ln.removeprefix("next: ") for ln in capsys.readouterr().out.splitlines() if ln.startswith("next: ")]
    # the interpreter's own pip and pytest (not a pytest found first on PATH), the [test] extra that
    # brings pytest, and the plugin's constraints.txt; paths quoted for the shell
    assert shlex.split(line) == [
        "python", "-m", "pip", "install", "-c", str(root / "constraints.txt"), "-e", f"{root}[test]",
        "&&", "python", "-m", "pytest", str(root),
    ]


@pytest.mark.parametrize("taken", ["ew", "pcgrad"])
def test_refuses_the_name_of_an_installed_method(taken, tmp_path):
    if taken not in mtoframe.available():
        pytest.skip(f"{taken} is not installed here")
    with pytest.raises(mtoframe.MtoError, match=rf"a method named '{taken}' is already installed \(from mtoframe"):
        scaffold(taken, tmp_path)
    assert not any(tmp_path.iterdir())


def test_generated_module_imports(generated):
    # the conformance suite runs on it in test_installs_with_entry_point_and_its_tests_pass
    pkg = _import_generated(generated)
    try:
        assert pkg.MTOFRAME_HOOK_API == ">=1,<2"
        assert pkg.Demo.name == "demo" and "d " in sys.modules["mtoframe_demo.demo"].__doc__
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
        [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", str(generated / "tests")],
        capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "SKIPPED" not in tests.stdout  # the entry-point test ran: the distribution is installed
    # the generated conformance test runs the state checks
    for check in ("partial_labels", "nonfinite"):
        assert re.search(rf"test_conformance\[{check}\] PASSED", tests.stdout), tests.stdout
