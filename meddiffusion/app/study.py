"""``meddiff study``: do synthetic rare cases make segmentation better? One command, end to end.

1. split the real labelled cases by patient into train and held-out test;
2. train the lesion generator on the training cases only and generate synthetic cases from training images
   only (checked by SHA-256: no test image may reach the generator or be a synthesis source);
3. train the segmenter real-only and real + synthetic with identical settings, for each seed;
4. evaluate both on the held-out real cases (overall, and lesion-wise by size);
5. write a report (Markdown + PNG): per-case table, paired statistics, small-lesion sensitivity, overlays.

Finished steps are kept in the output folder, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from meddiffusion.app.ablation import with_overrides
from meddiffusion.data.layouts import read_dataset
from meddiffusion.data.splits import train_test_split
from meddiffusion.errors import MeddiffError
from meddiffusion.eval.cases import evaluate_cases, reference_label
from meddiffusion.eval.report import box_plot, example_plot, write_csv
from meddiffusion.eval.stats import paired_comparison
from meddiffusion.io import check_output, modality_names, save_nifti, write_json, write_text
from meddiffusion.provenance import code_version, file_sha256
from meddiffusion.segmentation.predict import Segmenter
from meddiffusion.segmentation.train import load_seg_config
from meddiffusion.segmentation.train import run_training as train_segmenter
from meddiffusion.synth.cases import generate_cases, load_recipe
from meddiffusion.synth.train import load_synth_config
from meddiffusion.synth.train import run_training as train_generator
from meddiffusion.weights import WEIGHTS_FILE

ARMS = ("real", "real+synthetic")
COMPARED = ["WT_dice", "TC_dice", "ET_dice", "WT_hd95", "lesion_sensitivity", "lesion_sensitivity_<1mL"]


@dataclass
class StudyPreset:
    test_fraction: float = 0.4
    generator_steps: int = 3000
    synthetic_cases: int = 20
    sampler_steps: int = 10
    seg_steps: int = 1500
    synthetic_ratio: float = 0.3
    seeds: int = 3


#: quick: about 25 minutes on 2 CPU cores with the five shipped real cases; full: for the GPU machine
PRESETS = {
    "quick": StudyPreset(generator_steps=300, synthetic_cases=4, sampler_steps=4, seg_steps=300, seeds=2),
    "full": StudyPreset(),
}


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
    train_ids, test_ids = train_test_split(sorted(cases), preset.test_fraction, seed=0)
    test_hashes = {file_sha256(p) for c in test_ids for p in cases[c].images.values()}
    write_json({"train": train_ids, "test": test_ids, "preset": dataclasses.asdict(preset)}, out / "split.json")

    generator = out / "generator" / "weights"
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
        train_generator(config, out / "generator", resume=(out / "generator" / "checkpoint").exists())
    seen = json.loads((generator / "config.json").read_text())["training"]["data"]["image_sha256"]
    leaked = {h for images in seen.values() for h in images.values()} & test_hashes
    if leaked:
        raise MeddiffError("a held-out test image reached the generator's training data", generator)

    synthetic = out / "synthetic"
    recipe_obj = load_recipe(recipe, {"steps": preset.sampler_steps})
    recipe_obj.source, recipe_obj.layout, recipe_obj.weights = data, None, str(generator)
    recipe_obj.exclude_cases = sorted({*recipe_obj.exclude_cases, *test_ids})
    generate_cases(recipe_obj, preset.synthetic_cases, synthetic)
    sources = [json.loads(p.read_text())["source_sha256"] for p in sorted((synthetic / "metadata").glob("*.json"))]
    if {h for s in sources for h in s.values()} & test_hashes:
        raise MeddiffError("a held-out test image was used as a synthesis source", synthetic)
    write_json({"test_images_reached_generator": False, "test_images_used_as_sources": False}, out / "leak_check.json")

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
        path = out / "reference" / f"{case_id}.nii.gz"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            subject, label = reference_label(cases[case_id], base.data.modalities)
            save_nifti(label.astype(np.uint8), subject[modality_names(subject)[0]].affine, path, label=True)
    rows = []
    for seed in range(preset.seeds):
        for arm in ARMS:
            rows += _arm(base, arm, seed, synthetic, preset, cases, test_ids, _run(out, arm, seed))
    write_csv(rows, out / "per_case.csv")
    return _report(rows, out, data, recipe, preset)


def _run(out: Path, arm: str, seed: int) -> Path:
    return out / "seg" / arm.replace("+", "_") / f"seed{seed}"


def _section(overrides: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix + "."): v for k, v in overrides.items() if k.startswith(prefix + ".")}


def _arm(base, arm, seed, synthetic, preset, cases, test_ids, run: Path) -> list[dict]:
    done = run / "metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    changes: dict[str, Any] = {"seed": seed}
    if arm == "real+synthetic":
        changes.update({"data.synthetic": [str(synthetic)], "data.synthetic_ratio": preset.synthetic_ratio})
    config = with_overrides(base, changes)
    if not (run / "weights" / WEIGHTS_FILE).exists():
        train_segmenter(config, run, resume=(run / "checkpoint").exists())
    segmenter = Segmenter.from_pretrained(run / "weights")
    scored = evaluate_cases(segmenter.predict, cases, test_ids, run / "pred", config.data.modalities)
    rows = [{"arm": arm, "seed": seed, **r} for r in scored]
    write_json(rows, done)
    return rows


def _report(rows: list[dict], out: Path, data: str, recipe, preset: StudyPreset) -> Path:
    real = {(r["case_id"], r["seed"]): r for r in rows if r["arm"] == "real"}
    mixed = {(r["case_id"], r["seed"]): r for r in rows if r["arm"] == "real+synthetic"}
    pairs = sorted(set(real) & set(mixed))
    lines = [
        "# Augmentation study: real-only vs real + synthetic",
        "",
        f"Run {date.today().isoformat()} on {platform.processor() or platform.machine()} "
        f"({platform.system()}), meddiffusion {code_version()}.",
        f"Command: `{' '.join(sys.argv)}`",
        f"Data: `{data}`; recipe: `{recipe}`; preset: `{dataclasses.asdict(preset)}`.",
        "",
        "## Per case (held-out real cases, every seed)",
        "",
        "| case | seed | arm | " + " | ".join(COMPARED) + " |",
        "|---|---|---|" + "---|" * len(COMPARED),
    ]
    for key in pairs:
        for arm, table in (("real", real), ("real+synthetic", mixed)):
            r = table[key]
            lines.append(f"| {key[0]} | {key[1]} | {arm} | " + " | ".join(_fmt(r.get(m)) for m in COMPARED) + " |")
    lines += [
        "",
        "## Paired comparison (real + synthetic − real; one pair per patient, seeds averaged first; t-interval)",
        "",
        "| metric | real | real + synthetic | mean diff | 95 % CI | t-test p | Wilcoxon p |",
        "|---|---|---|---|---|---|---|",
    ]
    patients = sorted({case for case, _ in pairs})

    def per_patient(table: dict, m: str) -> list[float]:
        return [float(np.nanmean([table[k].get(m, np.nan) for k in pairs if k[0] == p] or [np.nan])) for p in patients]

    for m in COMPARED:
        try:
            with warnings.catch_warnings():  # a metric undefined for every seed of a patient stays NaN, dropped
                warnings.simplefilter("ignore", RuntimeWarning)
                a, b = per_patient(real, m), per_patient(mixed, m)
            s = paired_comparison(a, b)
        except MeddiffError as exc:
            lines.append(f"| {m} | – | – | – | not testable: {exc} | – | – |")
            continue
        lines.append(
            f"| {m} | {s['mean_a']:.3f} | {s['mean_b']:.3f} | {s['mean_diff']:+.3f} | "
            f"[{s['ci95_low']:+.3f}, {s['ci95_high']:+.3f}] | {s['t_pvalue']:.3f} | {s['wilcoxon_pvalue']:.3f} |"
        )
    per_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in ARMS}
    box_plot(per_arm, ["WT_dice", "TC_dice", "ET_dice", "WT_hd95"], out / "study_boxplot.png")
    first = pairs[0]
    examples = {
        arm: (
            first[0],
            _run(out, arm, first[1]) / "pred" / f"{first[0]}.nii.gz",
            out / "reference" / f"{first[0]}.nii.gz",
        )
        for arm in ARMS
    }
    example_plot("seg", examples, out / "study_examples.png")
    lines += ["", "![box plots](study_boxplot.png)", "", "![predictions](study_examples.png)", ""]
    return write_text("\n".join(lines), out / "report.md", force=True)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) and np.isfinite(value) else "–"
