"""The ``mtoframe`` command line. Each sub-command lives in ``mtoframe/commands/<name>.py`` with
``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: sub-command modules, in the order ``--help`` lists them
COMMANDS = ("plugins", "train", "compare", "bench", "toy", "new_plugin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtoframe", description="Multi-task optimisation on PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"mtoframe.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import MtoError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MtoError as exc:
        print(f"mtoframe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
