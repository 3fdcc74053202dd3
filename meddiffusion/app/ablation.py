"""``meddiff seg ablate``: k-fold cross-validation of model variants with identical folds and seeds.

Each variant is the base config plus a few overrides (the ablations of the proposal and the MONAI baseline);
each fold trains on the other folds' cases and predicts its own on their original grid; the evaluation
package scores every held-out case (Dice, HD95, sensitivity, specificity of WT / TC / ET), and paired tests
compare every variant with the full model. The FLAIR-threshold floor is fitted on the same training folds.
Finished folds are kept: re-running the command continues where it stopped. ``run_folds`` trains only those folds
now (as nnU-Net trains one fold per call, e.g. to pair each fold with a peer's run); folds finished earlier still
count in the rows returned. The folder's ``summary.md`` (``meddiff seg ablate``) covers every variant finished in
it, so variants run by separate calls into the same folder are paired with the full model in one table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meddiffusion.config import with_defaults
from meddiffusion.data.labels import region_masks
from meddiffusion.data.layouts import read_dataset
from meddiffusion.data.prepare import brain_normalise
from meddiffusion.data.splits import kfold_splits
from meddiffusion.errors import MeddiffError
from meddiffusion.eval.cases import METRICS, evaluate_cases, reference_label
from meddiffusion.eval.report import write_csv
from meddiffusion.eval.stats import paired_comparison
from meddiffusion.io import read_rows, write_json
from meddiffusion.provenance import provenance
from meddiffusion.segmentation.predict import Segmenter, postprocess
from meddiffusion.segmentation.threshold import fit_threshold, predict_threshold
from meddiffusion.segmentation.train import SegTrainConfig, run_training
from meddiffusion.segmentation.variants import VARIANTS
from meddiffusion.weights import WEIGHTS_FILE

#: a fold's per-case scores, written last: its presence marks the fold finished
SCORES_FILE = "metrics.json"


def with_overrides(config: SegTrainConfig, overrides: dict[str, Any]) -> SegTrainConfig:
    """A validated copy of ``config`` with ``section.key`` values replaced."""
    return with_defaults(SegTrainConfig, dataclasses.asdict(config), overrides, "<variant>")


def idle_variants(config: SegTrainConfig, variants: Sequence[str]) -> list[str]:
    """The variants of ``variants`` that would train ``config`` unchanged (removing a part it already lacks): their
    folds would repeat the reference's and report noise as an effect."""
    return [v for v in variants if VARIANTS[v] and with_overrides(config, VARIANTS[v]) == config]


def cross_validate(
    config: SegTrainConfig,
    out: str | Path,
    variants: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    run_folds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) every variant on every fold, or on ``run_folds`` only; returns the per-case rows of every
    finished fold (also in ``out``)."""
    out = Path(out)
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise MeddiffError(f"unknown variant(s) {', '.join(unknown)}; use {', '.join(VARIANTS)}")
    if idle := idle_variants(config, variants):
        settings = "; ".join(f"{k} is already {x}" for v in idle for k, x in VARIANTS[v].items())
        raise MeddiffError(f"variant(s) {', '.join(idle)} would train this config unchanged: {settings}")
    if run_folds is not None and (outside := [f for f in run_folds if not 0 <= f < folds]):
        raise MeddiffError(f"fold(s) {', '.join(map(str, outside))} outside 0-{folds - 1}")
    cases = {c.case_id: c for c in read_dataset(config.data.data, config.data.layout) if c.label is not None}
    splits = kfold_splits(sorted(cases), folds, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"folds": [{"train": tr, "test": te} for tr, te in splits], "seed": seed}, out / "folds.json")
    rows = []
    for variant in variants:
        for fold, (train_ids, test_ids) in enumerate(splits):
            run = fold_dir(out, variant, fold)
            if run_folds is not None and fold not in run_folds and not finished(out, variant, fold):
                continue  # left for a later call
            rows.extend(_fold(config, variant, fold, train_ids, test_ids, cases, run))
    write_csv(rows, out / "per_case.csv")
    return rows


def fold_dir(out: str | Path, variant: str, fold: int) -> Path:
    """The run folder of ``variant``'s ``fold`` in the ablation folder ``out``."""
    return Path(out) / variant / f"fold{fold}"


def finished(out: str | Path, variant: str, fold: int) -> bool:
    """Whether ``variant``'s ``fold`` in the folder ``out`` has been scored (its ``SCORES_FILE``, written last)."""
    return (fold_dir(out, variant, fold) / SCORES_FILE).exists()


def finished_rows(out: str | Path) -> list[dict[str, Any]]:
    """The per-case rows of every variant fold finished in ``out``, in ``VARIANTS`` order: the folder's summary
    covers what earlier calls (other variants, other folds) finished too."""
    return by_variant([r for path in sorted(Path(out).glob(f"*/fold*/{SCORES_FILE}")) for r in read_rows(path)])


def by_variant(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` by variant (``VARIANTS`` order, then peers scored elsewhere, e.g. nnU-Net's) and fold."""
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: (order.index(r["variant"]) if r["variant"] in order else len(order), r["fold"]))


def _fold(config, variant, fold, train_ids, test_ids, cases, run: Path) -> list[dict[str, Any]]:
    done = run / SCORES_FILE
    if done.exists():
        return read_rows(done)
    modalities = config.data.modalities
    if variant == "floor":
        flairs, tumours = [], []
        for case_id in train_ids:
            subject, label = reference_label(cases[case_id], modalities)
            flairs.append(brain_normalise(subject["flair"].data[0].numpy()))
            tumours.append(region_masks(label)["WT"])
        threshold = fit_threshold(flairs, tumours)

        def predict(subject):
            return postprocess(predict_threshold(brain_normalise(subject["flair"].data[0].numpy()), threshold))

        info = {"threshold": threshold}
    else:
        fold_config = with_overrides(config, VARIANTS[variant])
        fold_config.data.exclude_cases = list(test_ids)
        fold_config.data.val_cases = []
        if not (run / "weights" / WEIGHTS_FILE).exists():
            run_training(fold_config, run, resume=(run / "checkpoint").exists())
        segmenter = Segmenter.from_pretrained(run / "weights")
        predict = segmenter.predict
        info = {"weights_sha256": segmenter.hash}
    rows = [
        {"variant": variant, "fold": fold, **r}
        for r in evaluate_cases(predict, cases, test_ids, run / "pred", modalities)
    ]
    write_json(provenance(variant=variant, fold=fold, train=train_ids, test=test_ids, **info), run / "provenance.json")
    write_json(rows, done)
    return rows


def _defined(values: Sequence[float]) -> np.ndarray:
    """The values where the metric is defined (e.g. no ET sensitivity without an ET label)."""
    return np.asarray([v for v in values if np.isfinite(v)], dtype=float)


def _mean_sd(values: Sequence[float]) -> str:
    """Mean ± sd over the cases where the metric is defined, with their count where it is fewer than the row's
    cases, so a mean over fewer patients says so."""
    finite = _defined(values)
    if finite.size == 0:
        return "–"
    cell = f"{finite.mean():.3f} ± {finite.std(ddof=1) if finite.size > 1 else 0:.3f}"
    return cell if finite.size == len(values) else f"{cell} (n={finite.size})"


def _mean(values: Sequence[float]) -> str:
    finite = _defined(values)
    return f"{finite.mean():.3f}" if finite.size else "–"


def summary_table(rows: Sequence[dict[str, Any]], reference: str = "full") -> str:
    """Markdown: mean +- sd per variant, its mean Dice per fold (a fold's patients share one model, so a fold
    that goes the other way shows here), then paired tests of every variant against ``reference``."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [
        "| variant | n | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for v in variants:
        sub = [r for r in rows if r["variant"] == v]
        cells = [_mean_sd([r[m] for r in sub]) for m in METRICS]
        lines.append(f"| {v} | {len(sub)} | " + " | ".join(cells) + " |")
    folds = sorted({int(r["fold"]) for r in rows})
    lines += [
        "",
        "Mean Dice per fold, WT / TC / ET:",
        "",
        "| variant | " + " | ".join(f"fold {f}" for f in folds) + " |",
        "|---|" + "---|" * len(folds),
    ]
    for v in variants:
        cells = []
        for f in folds:
            sub = [r for r in rows if r["variant"] == v and int(r["fold"]) == f]
            means = [_mean([r[f"{region}_dice"] for r in sub]) for region in ("WT", "TC", "ET")]
            cells.append(" / ".join(means) if sub else "–")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    if reference in variants:
        lines += [
            "",
            f"Paired differences (variant − {reference}) over the same held-out cases:",
            "",
            "| variant | metric | mean diff | 95 % CI | t-test p | Wilcoxon p |",
            "|---|---|---|---|---|---|",
        ]
        ref = {r["case_id"]: r for r in rows if r["variant"] == reference}
        for v in variants:
            if v == reference:
                continue
            sub = {r["case_id"]: r for r in rows if r["variant"] == v}
            common = sorted(set(ref) & set(sub))
            for m in ("WT_dice", "TC_dice", "ET_dice", "WT_hd95"):
                try:
                    s = paired_comparison([ref[c][m] for c in common], [sub[c][m] for c in common])
                except MeddiffError:
                    continue
                lines.append(
                    f"| {v} | {m} | {s['mean_diff']:+.3f} | [{s['ci95_low']:+.3f}, {s['ci95_high']:+.3f}] | "
                    f"{s['t_pvalue']:.3f} | {s['wilcoxon_pvalue']:.3f} |"
                )
    return "\n".join(lines) + "\n"
