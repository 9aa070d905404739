"""pip-install every plugin distribution under plugins/ into the running interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
dists = sorted(str(p) for p in (root / "plugins").iterdir() if (p / "pyproject.toml").exists())
subprocess.run([sys.executable, "-m", "pip", "install", "-q", *dists], check=True)
