"""``meddiff study``: do synthetic rare cases make segmentation better? One command, end to end.

1. split the real labelled cases by patient into k folds (every case is tested once);
2. per fold, train the lesion generator on the fold's training cases only and generate synthetic cases from its
   training images only (checked by SHA-256: no test image may reach the generator or be a synthesis source);
3. per fold, train the segmenter real-only and real + synthetic at each ratio, identical settings, for each seed;
4. evaluate every arm on the fold's held-out real cases (overall, and lesion-wise by size, satellites counted);
5. write a report (Markdown + PNG): per-case table, statistics paired by patient (seeds averaged per patient
   first: repeated seeds are not independent pairs), pooled lesion detection by size, overlays.

Finished steps are kept in the output folder, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import warnings
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from meddiffusion.app.ablation import with_overrides
from meddiffusion.data.layouts import read_dataset
from meddiffusion.data.splits import kfold_splits
from meddiffusion.errors import MeddiffError
from meddiffusion.eval.cases import evaluate_cases, reference_label
from meddiffusion.eval.report import box_plot, example_plot, write_csv
from meddiffusion.eval.segmentation import LESION_BINS_ML
from meddiffusion.eval.stats import paired_comparison
from meddiffusion.io import check_output, modality_names, read_rows, save_nifti, write_json, write_text
from meddiffusion.provenance import code_version, file_sha256
from meddiffusion.segmentation.predict import Segmenter
from meddiffusion.segmentation.train import load_seg_config
from meddiffusion.segmentation.train import run_training as train_segmenter
from meddiffusion.synth.cases import generate_cases, load_recipe
from meddiffusion.synth.train import load_synth_config
from meddiffusion.synth.train import run_training as train_generator
from meddiffusion.weights import WEIGHTS_FILE

REAL = "real"
BINS = [name for _, _, name in LESION_BINS_ML]
#: the small lesions synthetic rare cases are for: the bins below 10 mL pooled per case, so that a patient with
#: small lesions gives a pair even where one bin alone holds few patients
SMALL = "<10mL"
COMPARED = [
    "WT_dice",
    "TC_dice",
    "ET_dice",
    "WT_hd95",
    "lesion_sensitivity",
    *(f"lesion_sensitivity_{b}" for b in BINS),
    f"lesion_sensitivity_{SMALL}",
]


@dataclass
class StudyPreset:
    folds: int = 5
    generator_steps: int = 3000
    synthetic_cases: int = 20
    sampler_steps: int = 10
    seg_steps: int = 1500
    ratios: list[float] = field(default_factory=lambda: [0.3])
    seeds: int = 3


#: quick: a smoke run (two folds); full: the powered design (5 folds, two ratios, 3 seeds) with the segmenter's
#: defaults (64-pixel patches; ``--seg-config`` for another recipe), short steps. Measured on 2 CPU cores (with the
#: dual-path network, the default network then): about 53 minutes a fold (generator 2 min, synthetic cases 1 min, 9
#: segmenters of 600 steps: 35 s to load the cases, 3.5 min to train, 55 s to predict and score); the full preset's
#: run took 4.1 hours (47-54 minutes a fold). Either preset resumes where it stopped, so it spans sessions
PRESETS = {
    "quick": StudyPreset(folds=2, generator_steps=300, synthetic_cases=4, sampler_steps=4, seg_steps=300, seeds=2),
    "full": StudyPreset(
        folds=5, generator_steps=600, synthetic_cases=10, sampler_steps=4, seg_steps=600, ratios=[0.25, 0.5], seeds=3
    ),
}


def arms(preset: StudyPreset) -> list[str]:
    """``real`` and one ``real+synthetic@R`` arm per ratio."""
    return [REAL, *(f"real+synthetic@{r:g}" for r in preset.ratios)]


def run_study(
    data: str | Path,
    recipe: str | Path,
    out: str | Path,
    preset: StudyPreset,
    seg_config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Run (or continue) the study; returns the report's path. ``overrides`` adjust the generator and
    segmenter configs (``synth.<section>.<key>`` / ``seg.<section>.<key>``), e.g. for tiny test runs.
    An interrupted study continues; a finished one (its report written) is only redone with ``force``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_output(out / "report.md", force)
    data = str(Path(data).resolve())
    overrides = overrides or {}
    cases = {c.case_id: c for c in read_dataset(data) if c.label is not None}
    splits = kfold_splits(sorted(cases), preset.folds, seed=0)
    write_json(
        {"folds": [{"train": tr, "test": te} for tr, te in splits], "preset": dataclasses.asdict(preset)},
        out / "split.json",
    )
    rows = []
    for k, (train_ids, test_ids) in enumerate(splits):
        rows += _fold(out / f"fold{k}", k, data, recipe, cases, train_ids, test_ids, preset, seg_config, overrides)
    write_csv(rows, out / "per_case.csv")
    return _report(rows, out, data, recipe, preset)


def _fold(fold_dir, k, data, recipe, cases, train_ids, test_ids, preset, seg_config, overrides) -> list[dict]:
    """One fold: its generator and synthetic cases (training cases only, checked), then every arm and seed."""
    test_hashes = {file_sha256(p) for c in test_ids for p in cases[c].images.values()}
    generator = fold_dir / "generator" / "weights"
    if not (generator / WEIGHTS_FILE).exists():
        config = load_synth_config(
            None,
            {
                "data.data": data,
                "data.exclude_cases": list(test_ids),
                "train.steps": preset.generator_steps,
                **_section(overrides, "synth"),
            },
        )
        train_generator(config, fold_dir / "generator", resume=(fold_dir / "generator" / "checkpoint").exists())
    seen = json.loads((generator / "config.json").read_text())["training"]["data"]["image_sha256"]
    if {h for images in seen.values() for h in images.values()} & test_hashes:
        raise MeddiffError("a held-out test image reached the generator's training data", generator)

    synthetic = fold_dir / "synthetic"
    recipe_obj = load_recipe(recipe, {"steps": preset.sampler_steps})
    recipe_obj.source, recipe_obj.layout, recipe_obj.weights = data, None, str(generator)
    recipe_obj.exclude_cases = sorted({*recipe_obj.exclude_cases, *test_ids})
    recipe_obj.seed = recipe_obj.seed + k
    generate_cases(recipe_obj, preset.synthetic_cases, synthetic)
    sources = [json.loads(p.read_text())["source_sha256"] for p in sorted((synthetic / "metadata").glob("*.json"))]
    if {h for s in sources for h in s.values()} & test_hashes:
        raise MeddiffError("a held-out test image was used as a synthesis source", synthetic)
    write_json(
        {"test_images_reached_generator": False, "test_images_used_as_sources": False}, fold_dir / "leak_check.json"
    )

    base = load_seg_config(
        seg_config,
        {
            "data.data": data,
            "data.exclude_cases": list(test_ids),
            "data.val_cases": [],
            "train.steps": preset.seg_steps,
            **_section(overrides, "seg"),
        },
    )
    for case_id in test_ids:  # the expert labels in BraTS 2021 numbers, beside the predictions
        path = fold_dir / "reference" / f"{case_id}.nii.gz"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            subject, label = reference_label(cases[case_id], base.data.modalities)
            save_nifti(label.astype(np.uint8), subject[modality_names(subject)[0]].affine, path, label=True)
    rows = []
    for seed in range(preset.seeds):
        for arm in arms(preset):
            run = _run(fold_dir, arm, seed)
            rows += [{"fold": k, **r} for r in _arm(base, arm, seed, synthetic, cases, test_ids, run)]
    return rows


def _run(fold_dir: Path, arm: str, seed: int) -> Path:
    return fold_dir / "seg" / arm.replace("+", "_").replace("@", "_") / f"seed{seed}"


def _section(overrides: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix + "."): v for k, v in overrides.items() if k.startswith(prefix + ".")}


def _arm(base, arm, seed, synthetic, cases, test_ids, run: Path) -> list[dict]:
    done = run / "metrics.json"
    if done.exists():
        return read_rows(done)
    changes: dict[str, Any] = {"seed": seed}
    if arm != REAL:
        changes.update({"data.synthetic": [str(synthetic)], "data.synthetic_ratio": float(arm.split("@")[1])})
    config = with_overrides(base, changes)
    if not (run / "weights" / WEIGHTS_FILE).exists():
        train_segmenter(config, run, resume=(run / "checkpoint").exists())
    segmenter = Segmenter.from_pretrained(run / "weights")
    scored = evaluate_cases(segmenter.predict, cases, test_ids, run / "pred", config.data.modalities)
    rows = [{"arm": arm, "seed": seed, **r} for r in scored]
    write_json(rows, done)
    return rows


def pool_small_lesions(row: dict) -> dict:
    """The row with the detection of its lesions under 10 mL pooled (NaN where it has none)."""
    small = [name for _, high, name in LESION_BINS_ML if high <= 10.0]
    n = sum(row.get(f"n_lesions_{b}", 0.0) for b in small)
    hit = sum(_detected(row, b) for b in small)
    return {**row, f"n_lesions_{SMALL}": n, f"lesion_sensitivity_{SMALL}": hit / n if n else float("nan")}


def _detected(row: dict, size_bin: str) -> float:
    """How many of a row's reference lesions in ``size_bin`` were detected (its sensitivity is NaN where none)."""
    n = row.get(f"n_lesions_{size_bin}", 0.0)
    return row[f"lesion_sensitivity_{size_bin}"] * n if n else 0.0


def _report(rows: list[dict], out: Path, data: str, recipe, preset: StudyPreset) -> Path:
    rows = [pool_small_lesions(r) for r in rows]
    names = arms(preset)
    patients = sorted({r["case_id"] for r in rows})
    fold_of = {r["case_id"]: r["fold"] for r in rows}

    def per_patient(arm: str, m: str) -> list[float]:
        """The metric per patient, seeds averaged first (NaN where undefined for every seed)."""
        with warnings.catch_warnings():  # a metric undefined for every seed of a patient stays NaN, dropped
            warnings.simplefilter("ignore", RuntimeWarning)
            return [
                float(np.nanmean([r.get(m, np.nan) for r in rows if r["arm"] == arm and r["case_id"] == p] or [np.nan]))
                for p in patients
            ]

    lines = [
        "# Augmentation study: real-only vs real + synthetic",
        "",
        f"Run {date.today().isoformat()} on {platform.processor() or platform.machine()} "
        f"({platform.system()}), meddiffusion {code_version()}.",
        f"Command: `{' '.join(sys.argv)}`",
        f"Data: `{data}`; recipe: `{recipe}`; preset: `{dataclasses.asdict(preset)}`.",
        f"{preset.folds}-fold cross-validation by patient: {len(patients)} patients, each tested once; "
        f"{preset.seeds} seed(s) per arm, averaged per patient before any statistic. Per seed: `per_case.csv`.",
        "",
        "## Per patient (Dice, seeds averaged)",
        "",
        "| case | fold | " + " | ".join(f"{arm} WT / TC / ET" for arm in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    dice = {arm: {m: per_patient(arm, m) for m in ("WT_dice", "TC_dice", "ET_dice")} for arm in names}
    for i, p in enumerate(patients):
        cells = [" / ".join(_fmt(dice[arm][m][i]) for m in ("WT_dice", "TC_dice", "ET_dice")) for arm in names]
        lines.append(f"| {p} | {fold_of[p]} | " + " | ".join(cells) + " |")
    for arm in names[1:]:
        lines += [
            "",
            f"## {arm} − real (one pair per patient, seeds averaged first; t-interval, Wilcoxon, Cohen's d_z)",
            "",
            "| metric | n | real | with synthetic | mean diff | 95 % CI | t-test p | Wilcoxon p | d_z |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in COMPARED:
            try:
                s = paired_comparison(per_patient(REAL, m), per_patient(arm, m))
            except MeddiffError as exc:
                lines.append(f"| {m} | – | – | – | – | not testable: {exc} | – | – | – |")
                continue
            lines.append(
                f"| {m} | {s['n']} | {s['mean_a']:.3f} | {s['mean_b']:.3f} | {s['mean_diff']:+.3f} | "
                f"[{s['ci95_low']:+.3f}, {s['ci95_high']:+.3f}] | {s['t_pvalue']:.3f} | {s['wilcoxon_pvalue']:.3f} | "
                f"{s['cohens_dz']:.2f} |"
            )
    lines += [
        "",
        "## Lesion-wise detection by size, pooled (every reference component, satellites included; all seeds)",
        "",
        "| arm | " + " | ".join(f"{b}: detected / lesions" for b in BINS) + " | false-positive components |",
        "|---|" + "---|" * (len(BINS) + 1),
    ]
    for arm in names:
        mine = [r for r in rows if r["arm"] == arm]
        cells = []
        for b in BINS:
            n = sum(r.get(f"n_lesions_{b}", 0.0) for r in mine)
            hit = sum(_detected(r, b) for r in mine)
            cells.append(f"{hit:.0f} / {n:.0f}" + (f" ({hit / n:.0%})" if n else ""))
        fps = sum(r.get("false_positives", 0.0) for r in mine)
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {fps:.0f} |")
    per_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in names}
    box_plot(per_arm, ["WT_dice", "TC_dice", "ET_dice", "WT_hd95"], out / "study_boxplot.png")
    first = next(r for r in rows if r["fold"] == 0 and r["seed"] == 0)
    fold_dir = out / "fold0"
    examples = {
        arm: (
            first["case_id"],
            _run(fold_dir, arm, 0) / "pred" / f"{first['case_id']}.nii.gz",
            fold_dir / "reference" / f"{first['case_id']}.nii.gz",
        )
        for arm in names
    }
    example_plot("seg", examples, out / "study_examples.png")
    lines += ["", "![box plots](study_boxplot.png)", "", "![predictions](study_examples.png)", ""]
    return write_text("\n".join(lines), out / "report.md", force=True)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) and np.isfinite(value) else "–"
