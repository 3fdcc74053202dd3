"""Label-efficiency curve (issue #17): a segmenter fine-tuned from the self-supervised encoder against one trained
from scratch, with 1, 2, 4, 8 and all training cases of each cross-validation fold, at the same budget.

    python benchmarks/ssl_label_efficiency.py --pretrained RUN/weights --out ~/meddiff-runs/ssl-curve \\
        [--steps 1000] [--labels 1 2 4 8 all] [--folds 5] [--run-folds 0 1] [--arms scratch] [--threads N]
        [--finished-only] [--include-rows CSV]

Folds are ``meddiff seg ablate``'s (by patient, seed 0, the 20 cases of ``configs/seg_cases.csv``). Within a fold
the labelled subsets are nested (the first n of one seeded shuffle of its training cases), so a larger subset only
adds cases; both arms of one cell see the same cases, steps, seed and recipe
(``configs/seg_dualpath_proposal.yaml``, whose deformable network the shipped encoder was pretrained for, without
its validation cases), and differ only in ``init``. Every held-out case is scored on its own grid (``eval.cases``).
A finished cell is kept: the benchmark continues where it stopped; ``--include-rows`` adds the rows of cells
finished elsewhere (an earlier run's ``per_case.csv``, e.g. the committed one) where this run has no such cell, so a
curve can be completed on a machine that lost the earlier cells' folders. Writes ``per_case.csv``, ``curve.json``
(mean Dice per arm and size, the fraction of the all-labels Dice each point reaches, and the paired difference
pretrained - scratch over patients with its t-interval) and ``curve.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "seg_dualpath_proposal.yaml"
ARMS = ("scratch", "pretrained")


def subsets(train_ids: list[str], sizes: list[str], seed: int) -> dict[str, list[str]]:
    """Nested labelled subsets of a fold's training cases: size -> case ids (``all``: every one)."""
    order = list(np.random.default_rng(seed).permutation(sorted(train_ids)))
    return {s: sorted(order if s == "all" else order[: int(s)]) for s in sizes if s == "all" or int(s) <= len(order)}


def run_cell(config, pretrained: Path, arm: str, ids: list[str], test_ids: list[str], cases, run: Path) -> list[dict]:
    from meddiffusion.app.ablation import with_overrides
    from meddiffusion.eval.cases import evaluate_cases
    from meddiffusion.io import read_rows, write_json
    from meddiffusion.segmentation.predict import Segmenter
    from meddiffusion.segmentation.train import run_training
    from meddiffusion.weights import WEIGHTS_FILE

    done = run / "metrics.json"
    if done.exists():
        return read_rows(done)
    cell = with_overrides(config, {"init": str(pretrained) if arm == "pretrained" else None})
    cell.data.exclude_cases = [c for c in cases if c not in ids]
    cell.data.val_cases = []
    if not (run / "weights" / WEIGHTS_FILE).exists():
        run_training(cell, run, resume=(run / "checkpoint").exists())
    segmenter = Segmenter.from_pretrained(run / "weights")
    rows = evaluate_cases(segmenter.predict, cases, test_ids, run / "pred", config.data.modalities)
    write_json(rows, done)
    return rows


def included_rows(path: Path, rows: list[dict], sizes: list[str]) -> list[dict]:
    """Rows of ``path`` (a ``per_case.csv``) whose cell (fold, labels, arm) this run does not hold, for ``sizes``."""
    from meddiffusion.eval.report import read_csv

    here = {(r["fold"], r["labels"], r["arm"]) for r in rows}
    out = []
    for r in read_csv(path):  # numbers come back as floats: the label count "2" as 2.0
        r["fold"], r["labels"] = int(r["fold"]), r["labels"] if r["labels"] == "all" else str(int(r["labels"]))
        if r["labels"] in sizes and (r["fold"], r["labels"], r["arm"]) not in here:
            out.append(r)
    return out


def summarise(rows: list[dict], sizes: list[str]) -> dict:
    from meddiffusion.errors import MeddiffError
    from meddiffusion.eval.stats import paired_comparison, t_interval

    out: dict = {"mean": {}, "n": {}, "wt_ci95": {}, "fraction_of_all": {}, "pretrained_minus_scratch": {}}
    out["patients"] = len({r["case_id"] for r in rows})
    for arm in ARMS:
        for size in sizes:
            cell = [r for r in rows if r["arm"] == arm and r["labels"] == size]
            if cell:
                means = {m: float(np.nanmean([r[f"{m}_dice"] for r in cell])) for m in ("WT", "TC", "ET")}
                out["mean"][f"{arm}/{size}"] = means
                out["n"][f"{arm}/{size}"] = len(cell)
                wt = [r["WT_dice"] for r in cell]  # one held-out patient each
                out["wt_ci95"][f"{arm}/{size}"] = list(t_interval(wt)) if len(wt) > 1 else [np.nan, np.nan]
    wt = {(r["arm"], r["labels"], r["case_id"]): r["WT_dice"] for r in rows}
    for key in out["mean"]:
        arm, size = key.split("/")
        # over the patients both this point and the all-labels point have (a curve may be finished in part)
        both = [c for (a, s, c) in wt if a == arm and s == size and (arm, "all", c) in wt]
        full = float(np.mean([wt[arm, "all", c] for c in both])) if both else float("nan")
        out["fraction_of_all"][key] = float(np.mean([wt[arm, size, c] for c in both])) / full if full else float("nan")
    for size in sizes:
        # one pair per patient: the same held-out case under both arms (cases are held out once across folds)
        a = {r["case_id"]: r["WT_dice"] for r in rows if r["arm"] == "scratch" and r["labels"] == size}
        b = {r["case_id"]: r["WT_dice"] for r in rows if r["arm"] == "pretrained" and r["labels"] == size}
        common = sorted(set(a) & set(b))
        try:
            out["pretrained_minus_scratch"][size] = paired_comparison([a[c] for c in common], [b[c] for c in common])
        except MeddiffError:
            continue
    return out


def plot(summary: dict, sizes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k, arm in enumerate(ARMS):
        xs = [s for s in sizes if f"{arm}/{s}" in summary["mean"]]
        means = np.array([summary["mean"][f"{arm}/{s}"]["WT"] for s in xs])
        lo, hi = np.array([summary["wt_ci95"][f"{arm}/{s}"] for s in xs]).T
        x = np.arange(len(xs)) + (k - 0.5) * 0.08  # side by side, so the intervals do not hide each other
        ax.errorbar(x, means, yerr=[means - lo, hi - means], marker="o", capsize=3, label=arm)
        ax.set_xticks(range(len(xs)), [f"{s}\n(n={summary['n'][f'{arm}/{s}']})" for s in xs])
    ax.set_xlabel("labelled training cases (n: held-out patients)")
    ax.set_ylabel("whole-tumour Dice (held-out cases)")
    ax.set_title("mean and 95 % t-interval over the held-out patients", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", type=Path, required=True, help="the `ssl pretrain` weights folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--steps", type=int, default=1000, help="fine-tuning steps of every cell")
    parser.add_argument("--labels", nargs="+", default=["1", "2", "4", "8", "all"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--run-folds", type=int, nargs="+", help="only these folds (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        default=list(ARMS),
        help="only these arms (default: both): two processes can share a fold's last cells",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of every cell (default: the config's); on 2 cores, two 1-thread runs of different folds"
        " side by side did about 8 %% more steps an hour than one 2-thread run",
    )
    parser.add_argument("--finished-only", action="store_true", help="summarise the finished cells; train nothing")
    parser.add_argument("--include-rows", type=Path, help="per_case.csv of cells finished in an earlier run")
    args = parser.parse_args()

    from meddiffusion.data.layouts import read_dataset
    from meddiffusion.data.splits import kfold_splits
    from meddiffusion.eval.report import write_csv
    from meddiffusion.segmentation.train import load_seg_config

    overrides = {"train.steps": args.steps, "seed": args.seed}
    if args.threads is not None:
        overrides["train.threads"] = args.threads
    config = load_seg_config(args.config, overrides)
    cases = {c.case_id: c for c in read_dataset(config.data.data) if c.label is not None}
    splits = kfold_splits(sorted(cases), args.folds, args.seed)
    rows: list[dict] = []
    for fold, (train_ids, test_ids) in enumerate(splits):
        if args.run_folds is not None and fold not in args.run_folds:
            continue
        for size, ids in subsets(train_ids, args.labels, args.seed + fold).items():
            for arm in args.arms:
                run = args.out / f"fold{fold}" / f"{size}_{arm}"
                if args.finished_only and not (run / "metrics.json").exists():
                    continue
                for r in run_cell(config, args.pretrained, arm, ids, test_ids, cases, run):
                    rows.append({"fold": fold, "labels": size, "arm": arm, "n_train": len(ids), **r})
    if args.include_rows is not None:
        rows = included_rows(args.include_rows, rows, args.labels) + rows
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "per_case.csv")
    summary = summarise(rows, args.labels)
    (args.out / "curve.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.labels, args.out / "curve.png")
    print(json.dumps(summary["mean"], indent=2))


if __name__ == "__main__":
    main()
