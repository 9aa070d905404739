"""``mtoframe new-plugin NAME [--dir DIR]``: scaffold a plugin distribution folder."""

from __future__ import annotations

import argparse
from typing import Any

from ..scaffold import scaffold


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("new-plugin", help="scaffold a plugin distribution mtoframe-NAME with an example method and tests")
    p.add_argument("name", help="method name: lower-case letters and digits, no separators")
    p.add_argument("--dir", default=".", help="folder to create mtoframe-NAME in (default: current folder)")
    return p


def run(args: argparse.Namespace) -> int:
    root = scaffold(args.name, args.dir)
    print(f"created {root}")
    print(f"next: pip install -e {root} && pytest {root}")
    return 0
