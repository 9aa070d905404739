"""Test each plugin distribution alone on top of the core, one after another in this environment.

For each distribution (default: every one under plugins/): install it, assert that exactly its
methods appear next to the core's (check_isolation.py), run its own tests, uninstall it. One
environment serves all plugins in turn, so the suite needs one torch install instead of one per
plugin (about 1.3 GB each; twelve of them filled a CI machine's disk). Dependencies a plugin pulls
in (cvxpy, ...) stay installed after it is removed; isolation is about which methods register.

Usage: plugins_alone.py [DIST ...]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent


def run(*args: str) -> int:
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, check=False).returncode


def main(names: list[str]) -> int:
    dists = names or sorted(p.name for p in (root / "plugins").iterdir() if (p / "pyproject.toml").exists())
    failed = []
    for dist in dists:
        path = root / "plugins" / dist
        if not (path / "pyproject.toml").exists():
            print(f"no plugin distribution {dist!r} under {root / 'plugins'}")
            return 2
        if run(sys.executable, "-m", "pip", "install", "-q", str(path)) != 0:
            failed.append(f"{dist} (install)")
            continue
        ok = run(sys.executable, str(root / ".ci" / "check_isolation.py"), dist) == 0
        ok = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path / "tests")) == 0 and ok
        # removed even after a failure, so the next distribution is tested alone too
        if run(sys.executable, "-m", "pip", "uninstall", "-q", "-y", dist) != 0:
            failed.append(f"{dist} (uninstall)")
            break
        if not ok:
            failed.append(dist)
    print("plugins alone:", "all passed" if not failed else "FAILED: " + ", ".join(failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
