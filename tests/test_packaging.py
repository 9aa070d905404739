"""Packaging metadata of every distribution in the repository (the core and each plugin):
PEP 639 licence fields with a LICENSE file, a setuptools that understands them, and an upper
bound on cvxpy wherever it is required (mtoframe.solvers uses its internals)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = [ROOT, *sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))]


def _pyproject(dist: Path) -> dict:
    return tomllib.loads((dist / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(dist: Path) -> list[Requirement]:
    project = _pyproject(dist)["project"]
    extras = project.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*project.get("dependencies", []), *(r for e in extras for r in e)]]


def test_every_plugin_directory_is_a_distribution():
    assert len(DISTRIBUTIONS) == 1 + len([p for p in (ROOT / "plugins").iterdir() if p.is_dir()])


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name if d != ROOT else "mtoframe")
def test_spdx_licence_and_license_file(dist):
    project = _pyproject(dist)["project"]
    # PEP 639: an SPDX expression, not the deprecated {text = ...} table setuptools warns about
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (dist / "LICENSE").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "MIT License"
    assert "Copyright (c) 2026 mtoframe contributors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name if d != ROOT else "mtoframe")
def test_build_backend_understands_pep_639(dist):
    build = _pyproject(dist)["build-system"]
    setuptools = [Requirement(r) for r in build["requires"] if Requirement(r).name == "setuptools"]
    assert len(setuptools) == 1
    # license expressions and license-files arrived in setuptools 77
    assert not setuptools[0].specifier.contains("76.1.0") and setuptools[0].specifier.contains("77.0.1")


def test_cvxpy_is_bounded_wherever_it_is_required():
    requiring = {dist.name: r for dist in DISTRIBUTIONS for r in _requirements(dist) if r.name == "cvxpy"}
    assert set(requiring) >= {ROOT.name, "mtoframe-nashmtl", "mtoframe-cagrad"}
    for where, req in requiring.items():
        # solvers.py's compiled fast path uses cvxpy internals that a minor release may change
        assert req.specifier.contains("1.9.3") and not req.specifier.contains("1.10.0"), (where, str(req))
