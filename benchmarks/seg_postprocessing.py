"""Post-processing chosen on out-of-fold predictions (#14): what it gives each variant, estimated honestly.

    python benchmarks/seg_postprocessing.py --runs ~/meddiff-runs/seg-cv --variants plain unet --out docs/benchmarks \
        --references full=docs/benchmarks/seg_cv20_per_case.csv nnunet=docs/benchmarks/seg_nnunet_per_case.csv

For each variant of a ``meddiff seg ablate`` folder, ``meddiff seg postprocessing``'s report (made here, or reused
when ``seg_postprocessing_<variant>.json`` exists in ``--out`` or ``--reports`` names it): every candidate rule's
means, the rule chosen on all folds, and each fold scored under the rule chosen on the other folds (leave-one-fold-
out). Paired over patients (95 % t-interval, Wilcoxon): each variant leave-fold-out against itself under the
a-priori rule (what choosing the rule gives); each reference (``VARIANT=CSV``: that variant's rows of a per-case
CSV, scored as they were, e.g. the full recipe's under the a-priori rule, nnU-Net's raw predictions) against the
variant under the a-priori rule and leave-fold-out; and the first variant against the others, both leave-fold-out.
Writes ``seg_postprocessing.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("WT_dice", "TC_dice", "ET_dice", "WT_hd95")


def report(runs: Path, variant: str, out: Path) -> dict:
    from meddiffusion.app.postprocessing import choose_postprocessing

    path = out / f"seg_postprocessing_{variant}.json"
    if path.exists():
        return json.loads(path.read_text())
    return choose_postprocessing(runs, variant, path)


def paired_lines(name: str, a: list[dict], b: list[dict]) -> list[str]:
    """Table rows of B - A over the patients both hold, per metric (NaN, e.g. an undelineated ET, left out)."""
    from meddiffusion.eval.stats import paired_comparison

    a_by, b_by = {r["case_id"]: r for r in a}, {r["case_id"]: r for r in b}
    common = sorted(set(a_by) & set(b_by))

    def value(row: dict, m: str) -> float:
        return float("nan") if row[m] is None else float(row[m])

    lines = []
    for m in METRICS:
        s = paired_comparison([value(a_by[c], m) for c in common], [value(b_by[c], m) for c in common])
        lines.append(
            f"| {name} | {m} | {s['n']} | {s['mean_a']:.3f} | {s['mean_b']:.3f} | {s['mean_diff']:+.3f} | "
            f"[{s['ci95_low']:+.3f}, {s['ci95_high']:+.3f}] | {s['wilcoxon_pvalue']:.3f} |"
        )
    return lines


def named_paths(parser: argparse.ArgumentParser, specs: list[str], flag: str) -> dict[str, Path]:
    """``VARIANT=PATH`` arguments by variant; one without ``=`` is a usage error naming it."""
    if bad := [s for s in specs if "=" not in s]:
        parser.error(f"{flag} takes VARIANT=PATH, not {', '.join(bad)}")
    return {name: Path(path) for name, _, path in (s.partition("=") for s in specs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="a `meddiff seg ablate --out` folder")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument(
        "--references", nargs="*", default=[], metavar="VARIANT=CSV", help="a variant's rows of a per-case CSV"
    )
    parser.add_argument(
        "--reports", nargs="*", default=[], metavar="VARIANT=JSON", help="a variant's report made already, elsewhere"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    given = named_paths(parser, args.reports, "--reports")
    named_references = named_paths(parser, args.references, "--references")
    from meddiffusion.eval.report import read_csv
    from meddiffusion.io import write_text
    from meddiffusion.provenance import code_version, invocation

    args.out.mkdir(parents=True, exist_ok=True)
    reports = {
        v: json.loads(given[v].read_text()) if v in given else report(args.runs, v, args.out) for v in args.variants
    }
    lines = [f"Made by `{invocation()['command']}` (code {code_version()}).", ""]
    lines += [
        "| variant | rule (min_fraction) | cases | WT Dice | TC Dice | ET Dice | WT HD95 (mm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, r in reports.items():
        rules = {**r["rules"], "leave-one-fold-out": r["leave_fold_out"]["summary"]}
        for rule, mean in rules.items():
            chosen = " (chosen on all folds)" if rule == str(r["chosen"]["min_fraction"]) else ""
            lines.append(
                f"| {v} | {rule}{chosen} | {mean['cases']} | {mean['WT_dice']:.3f} | {mean['TC_dice']:.3f} | "
                f"{mean['ET_dice']:.3f} | {mean['WT_hd95']:.1f} |"
            )
        lines.append(f"| {v} | rules by fold, leave-one-fold-out: {r['leave_fold_out']['rules_by_fold']} | | | | | |")
    lines += ["", "Paired over patients (B - A; 95 % t-interval; Wilcoxon p):", ""]
    lines += [
        "| comparison | metric | n | mean A | mean B | B - A | 95 % CI | Wilcoxon p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    references = {}
    for name, path in named_references.items():
        references[name] = [r for r in read_csv(path) if r["variant"] == name]
        if not references[name]:
            raise SystemExit(f"{path}: no rows of variant {name!r}")
    first = args.variants[0]
    for v, r in reports.items():
        mildest = min(row["min_fraction"] for row in r["rows"])  # the rule the predictions were saved with
        apriori = [row for row in r["rows"] if row["min_fraction"] == mildest]
        held_out = r["leave_fold_out"]["rows"]
        lines += paired_lines(f"{v}: leave-fold-out rule - a-priori rule", apriori, held_out)
        for name, rows in references.items():
            lines += paired_lines(f"{v} a-priori rule - {name}", rows, apriori)
            lines += paired_lines(f"{v} leave-fold-out - {name}", rows, held_out)
        if v != first:
            lines += paired_lines(
                f"{first} - {v}, both leave-fold-out", held_out, reports[first]["leave_fold_out"]["rows"]
            )
    write_text("\n".join(lines) + "\n", args.out / "seg_postprocessing.md", force=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
