"""Assert that the methods installed in this environment are exactly the core's plus those of one
plugin distribution, and that no plugin failed to load. Usage: check_isolation.py DIST."""

from __future__ import annotations

import sys

from mtoframe.registry import get_registry


def main(dist: str) -> int:
    reg = get_registry()
    if reg.failures:
        print("plugins failed to load:", [(f.plugin, f.error) for f in reg.failures])
        return 1
    by_dist: dict[str, list[str]] = {}
    for info in reg.infos():
        by_dist.setdefault(info.distribution, []).append(info.name)
    others = sorted(set(by_dist) - {"mtoframe", dist})
    if others or not by_dist.get(dist):
        print(f"expected only mtoframe and {dist}; found {by_dist}")
        return 1
    print(f"{dist}: {', '.join(by_dist[dist])} (core: {', '.join(by_dist['mtoframe'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
