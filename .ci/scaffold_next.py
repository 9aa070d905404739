"""tox env ``scaffold``: run ``mtoframe new-plugin ARGS...``, then the "next:" line it prints,
verbatim, in a shell. CI thus runs exactly the line a plugin author is told to run."""

from __future__ import annotations

import subprocess
import sys


def main(args: list[str]) -> int:
    out = subprocess.run(["mtoframe", "new-plugin", *args], capture_output=True, text=True)
    sys.stdout.write(out.stdout + out.stderr)
    if out.returncode:
        return out.returncode
    lines = [line.removeprefix("next: ") for line in out.stdout.splitlines() if line.startswith("next: ")]
    if len(lines) != 1:
        print(f"expected one 'next: ' line from mtoframe new-plugin, got {len(lines)}")
        return 1
    print(f"$ {lines[0]}", flush=True)
    return subprocess.run(lines[0], shell=True).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
