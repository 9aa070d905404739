"""The measurement behind Rep-MTL's shipped defaults: τ × λ (λ_tsr = λ_csa) on ``scenes`` and
``multimnist`` with the paired quality harness of ``mtoframe bench --quality``.

    python scripts/defaults_sweep.py --data multimnist --out DIR [--seeds 5 --epochs 10 ...]

Every setting is trained with the same seeds and data order as EW; the JSON it writes is
``mtoframe bench --quality``'s, one record per setting. Selection uses the **validation** split's
paired difference to EW (``record["val"]["vs_ew"]``), never the test split: the default is the
setting with the best mean val ``vs_ew`` over both datasets among those whose val interval does
not lie below 0 on either (``python scripts/defaults_sweep.py --select A.json B.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

TAUS = (0.07, 0.2, 0.5, 1.0, 2.0)
LAMBDAS = (0.1, 0.3, 0.9)


def grid(taus: list[float], lambdas: list[float],
         fixed: dict[str, object] | None = None) -> list[list[tuple[str, dict[str, object]]]]:
    """One single-method stack per (τ, λ); ``fixed`` adds the same other options to every setting
    (e.g. ``positive_in_denominator=True``), so a variant is swept like the literal method."""
    return [[("repmtl", {"tau": t, "lambda_tsr": lam, "lambda_csa": lam, **(fixed or {})})]
            for t, lam in itertools.product(taus, lambdas)]


def parse_fixed(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings to options: true/false to bool, numbers to float, anything else as text.
    The option class validates names and values when the method is built."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE (e.g. positive_in_denominator=true), got {pair!r}")
        if raw.lower() in ("true", "false"):
            out[key] = raw.lower() == "true"
        else:
            try:
                out[key] = float(raw)
            except ValueError:
                out[key] = raw
    return out


def _ci(mean: float, ci: list[float]) -> str:
    return f"{mean:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def select(paths: list[Path]) -> None:
    """Print the sweep as a Markdown table (val used for the choice; test shown, never used) and
    the selected default. Files of several stages may be given: each stage trains its own EW with
    the same seeds, so every difference is paired within its file."""
    per: dict[str, dict[str, dict]] = {}
    for p in paths:
        result = json.loads(p.read_text())
        for r in result["records"]:
            if r["stack"].startswith("repmtl("):
                per.setdefault(r["stack"], {})[result["dataset"]] = r
    datasets = sorted({d for v in per.values() for d in v})
    print("| setting | " + " | ".join(f"{d} val vs EW [95% CI] | {d} test vs EW [95% CI]" for d in datasets)
          + " | mean val vs EW | selectable |")
    print("|---" * (2 + 2 * len(datasets)) + "|---|")
    ok = {}
    for label, by in sorted(per.items()):
        if set(by) != set(datasets):
            print(f"| {label} | " + " | ".join(
                f"{_ci(by[d]['val']['vs_ew'], by[d]['val']['vs_ew_ci'])} | {_ci(by[d]['vs_ew'], by[d]['vs_ew_ci'])}"
                if d in by else "not run | not run" for d in datasets) + " | | no (not run on every dataset) |")
            continue
        worse = [d for d, r in by.items() if not math.isnan(r["val"]["vs_ew_ci"][1]) and r["val"]["vs_ew_ci"][1] < 0]
        mean = sum(r["val"]["vs_ew"] for r in by.values()) / len(by)
        print(f"| {label} | " + " | ".join(f"{_ci(by[d]['val']['vs_ew'], by[d]['val']['vs_ew_ci'])} | "
                                           f"{_ci(by[d]['vs_ew'], by[d]['vs_ew_ci'])}" for d in datasets)
              + f" | {mean:+.2f} | " + (f"no: worse than EW on {', '.join(worse)}" if worse else "yes") + " |")
        if not worse:
            ok[label] = mean
    if not ok:
        print("\nno setting is within noise of EW on every dataset")
        return
    best = max(ok, key=ok.__getitem__)
    print(f"\nselected (best mean val vs_ew among settings not significantly worse than EW on any dataset): "
          f"{best} ({ok[best]:+.2f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--select", nargs="+", type=Path, help="sweep JSON files to select the default from")
    ap.add_argument("--data", choices=("scenes", "multimnist"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--taus", default=",".join(map(str, TAUS)))
    ap.add_argument("--lambdas", default=",".join(map(str, LAMBDAS)))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another repmtl option for every setting, e.g. positive_in_denominator=true (repeatable)")
    ap.add_argument("--extra", default="", help="more stacks as in --methods, e.g. 'repmtl'")
    for key in ("seeds", "epochs", "n_train", "n_val", "n_test", "batch", "size", "width"):
        ap.add_argument(f"--{key.replace('_', '-')}", type=int)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.select:
        select(args.select)
        return 0
    if args.data is None or args.out is None:
        ap.error("--data and --out are required unless --select is given")
    import torch

    from mtoframe.bench.quality import QualityConfig, run_quality_cli
    from mtoframe.commands.bench import quality_sizes

    torch.set_num_threads(args.threads)
    sizes = quality_sizes(args.data, quick=False)
    sizes.update({k: v for k, v in vars(args).items() if k in sizes and v is not None})
    cfg = QualityConfig(data=args.data, **sizes)
    fixed = parse_fixed(args.set)
    stacks = grid([float(t) for t in args.taus.split(",")], [float(x) for x in args.lambdas.split(",")], fixed)
    stacks += [s.split("+") for s in args.extra.split(",") if s]
    return run_quality_cli(stacks, cfg, out=args.out, strict=True, stream=sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
