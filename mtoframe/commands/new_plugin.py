"""``mtoframe new-plugin NAME [--stateful] [--dir DIR] [--author 'NAME <EMAIL>']``: scaffold a
plugin distribution folder and print the line that installs and tests it."""

from __future__ import annotations

import argparse

from ..scaffold import next_command, scaffold


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("new-plugin",
                       help="scaffold a plugin distribution mtoframe-NAME with an example method and tests")
    p.add_argument("name", help="method name: lower-case letters and digits, no separators, not an installed method's")
    p.add_argument("--dir", default=".", help="folder to create mtoframe-NAME in (default: current folder)")
    p.add_argument("--stateful", action="store_true",
                   help="an example aggregator with per-task state (partial labels, non-finite steps, state_dict) "
                        "instead of the state-free one")
    p.add_argument("--author", metavar="'NAME <EMAIL>'",
                   help="author for pyproject.toml and LICENSE (default: git config user.name/user.email)")
    return p


def run(args: argparse.Namespace) -> int:
    root = scaffold(args.name, args.dir, stateful=args.stateful, author=args.author)
    print(f"created {root}")
    print(f"next: {next_command(root)}")
    return 0
