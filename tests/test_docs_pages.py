"""The user guides run: every ``python`` block of docs/own-loop.md, docs/lightning.md and
docs/migration.md, top to bottom as one script per page, and every stack in the migration tables."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mtoframe

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: page -> (modules it imports beyond the core, methods its code uses)
PAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "own-loop.md": ((), ("repmtl", "nashmtl", "famo", "uw", "dwa")),
    "lightning.md": (("lightning",), ("repmtl", "nashmtl")),
    "migration.md": (("torchjd",), ("cagrad", "torchjd.upgrad")),
}


def _blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", (DOCS / page).read_text(), re.S | re.M)


def _require(modules: tuple[str, ...], methods: tuple[str, ...]) -> None:
    for module in modules:
        pytest.importorskip(module)
    missing = sorted(set(methods) - set(mtoframe.available()))
    if missing:
        pytest.skip(f"needs the plugin(s) providing {missing}")


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_of_the_page_runs(page: str, tmp_path: Path) -> None:
    blocks = _blocks(page)
    assert blocks, f"docs/{page} has no python block"
    _require(*PAGES[page])
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"docs/{page} failed:\n{run.stderr[-4000:]}"


def _table_stacks(marker: str) -> list[tuple[str, Any]]:
    text = (DOCS / "migration.md").read_text()
    [table] = re.findall(rf"<!-- {marker}:start -->\n(.*?)<!-- {marker}:end -->", text, re.S)
    header, _, *lines = table.strip().splitlines()
    column = [c.strip() for c in header.strip("|").split("|")].index("mtoframe stack")
    out = []
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        stack = cells[column]
        if stack != "—":
            out.append((cells[0], ast.literal_eval(stack.strip("`"))))
    return out


@pytest.mark.parametrize("marker", ["libmtl-table", "torchjd-table"])
def test_every_stack_in_the_migration_tables_builds(marker: str) -> None:
    stacks = _table_stacks(marker)
    assert len(stacks) >= 15
    names = {m if isinstance(m, str) else m[0] for _, stack in stacks for m in stack}
    _require((), tuple(sorted(names)))
    for source, stack in stacks:
        built = mtoframe.Stack(stack, tasks=["a", "b"])  # unknown names, bad options, bad order all raise
        assert [m.name for m in built] == [m if isinstance(m, str) else m[0] for m in stack], source


def test_readme_links_the_guides() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES:
        assert f"(docs/{page})" in readme, f"README.md does not link docs/{page}"
