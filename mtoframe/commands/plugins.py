"""``mtoframe plugins [--json]``: installed methods, plugins that failed to load, and method
names claimed by more than one distribution."""

from __future__ import annotations

import argparse
import json

from ..registry import get_registry


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("plugins", help="list installed methods, their distributions, hooks and options")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def run(args: argparse.Namespace) -> int:
    reg = get_registry()
    methods = [i.describe() for i in reg.infos()]
    failures = [{"plugin": f.plugin, "distribution": f.distribution, "version": f.version, "error": f.error}
                for f in reg.failures]
    conflicts = [{"name": c.name, "distributions": [i.distribution for i in c.claimants], "message": c.describe()}
                 for c in reg.conflicts.values()]
    if args.json:
        print(json.dumps({"methods": methods, "failures": failures, "conflicts": conflicts}, indent=2))
        return 0
    width = max(len(m["name"]) for m in methods)
    for m in methods:
        opts = ", ".join(f"{k}={v!r}" for k, v in m["options"].items()) or "-"
        print(f"{m['name']:<{width}}  {m['distribution']} {m['version']}  [{', '.join(m['hooks']) or 'no hooks'}]")
        print(f"{'':<{width}}  {m['summary']}")
        print(f"{'':<{width}}  options: {opts}")
    for f in failures:
        print(f"FAILED {f['plugin']} ({f['distribution']} {f['version']}): {f['error']}")
    for c in conflicts:
        print(f"CONFLICT {c['name']}: {c['message']}")
    return 0
