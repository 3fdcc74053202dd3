"""The peer a user would pick instead: nnU-Net v2, on the same 20 real cases, folds and scoring (issue #14).

    bash benchmarks/nnunet_env.sh ~/venvs/nnunet                     # its own environment (see that script)
    python benchmarks/seg_nnunet.py prepare --work ~/meddiff-runs/nnunet
    python benchmarks/seg_nnunet.py run --work ~/meddiff-runs/nnunet --budget-from ~/meddiff-runs/seg-cv/full \
        --batch-size 8
    python benchmarks/seg_nnunet.py score --work ~/meddiff-runs/nnunet --batch-size 8 --out docs/benchmarks \
        --budget-from ~/meddiff-runs/seg-cv/full                      # and the paired comparison with it

On a machine without the toolkit's run folders: ``run --budget-s SECONDS`` gives every fold that budget, and
``score --budget-from docs/benchmarks/seg_cv20_per_case.csv --include-rows docs/benchmarks/seg_nnunet_per_case.csv``
compares with the committed per-case rows of the toolkit (its ``full`` variant) and keeps the committed nnU-Net rows
of folds whose predictions are not here.

``prepare`` writes the cases of ``configs/seg_cases.csv`` (labels mapped to BraTS 2021 by the toolkit's own data
layer) as nnU-Net raw data set 501 with nnU-Net's BraTS conventions: four channels (FLAIR, T1, T1ce, T2; a
modality a case lacks is all zeros, as the toolkit's segmenter sees it), labels 1 oedema, 2 necrotic core,
3 enhancing, trained region-based (whole tumour, tumour core, enhancing), and the toolkit's 5 folds by patient
(``kfold_splits``, seed 0) as ``splits_final.json``, so every method sees the same folds. ``run`` plans and
preprocesses the 2D configuration (the closest to the toolkit's 2.5D model) and trains each fold on the CPU for as
many seconds as the toolkit's own run of that fold took (``--budget-from``: the ``seg ablate`` variant folder;
``benchmarks/nnunet_budget_trainer.py``); nnU-Net's final validation predicts the fold's held-out cases with the
final weights and mirroring. Planned for a GPU, nnU-Net's 2D batch is 105 slices of 192 x 160 (about 40 s a step
on 2 cores: some 50 steps in a 35-minute budget); ``--batch-size 8`` (the toolkit's) is the one change made, as an
nnU-Net configuration inheriting the planned one. ``score`` maps the predictions back to BraTS 2021 labels on each
case's grid and scores them with the toolkit's evaluation (``eval.cases``), like every other method;
``score --postprocess`` first applies the toolkit's post-processing (``segmentation.predict.postprocess``: tumour
components under a tenth of the largest dropped) to nnU-Net's predictions, to separate the networks from that step.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from meddiffusion.app.ablation import SCORES_FILE
from meddiffusion.data.layouts import read_dataset
from meddiffusion.data.splits import kfold_splits
from meddiffusion.eval.cases import reference_label, score_case, undefine_undelineated
from meddiffusion.eval.report import read_csv, write_csv
from meddiffusion.eval.stats import paired_comparison
from meddiffusion.io import modality_names, read_rows
from meddiffusion.segmentation.predict import postprocess

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "configs" / "seg_cases.csv"
DATASET = "Dataset501_MedDiffBraTS"
CHANNELS = ("flair", "t1", "t1ce", "t2")
#: BraTS 2021 label -> nnU-Net's BraTS label (oedema 1, necrotic core 2, enhancing 3), and back, as lookup tables
TO_NNUNET = np.array([0, 2, 1, 0, 3], dtype=np.uint8)
FROM_NNUNET = np.array([0, 2, 1, 4], dtype=np.uint8)
TRAINER = "nnUNetTrainer_MedDiffBudget"  # benchmarks/nnunet_budget_trainer.py


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "nnUNet_raw": str(work / "raw"),
        "nnUNet_preprocessed": str(work / "preprocessed"),
        "nnUNet_results": str(work / "results"),
    }


def prepare(work: Path, folds: int = 5) -> None:
    cases = {c.case_id: c for c in read_dataset(CASES) if c.label is not None}
    raw = work / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case_id, case in cases.items():
        subject, label = reference_label(case, CHANNELS)
        reference = subject[next(iter(m for m in CHANNELS if m in subject))]
        for k, m in enumerate(CHANNELS):
            data = subject[m].data[0].numpy() if m in subject else np.zeros(reference.spatial_shape, np.float32)
            # background at 0, as in raw scans: the BRATS 2015 volumes are z-scored (background -3), which would
            # defeat nnU-Net's crop to the non-zero region and its normalisation inside it
            data = data - data.min()
            nib.save(
                nib.Nifti1Image(data.astype(np.float32), reference.affine),
                raw / "imagesTr" / f"{case_id}_{k:04d}.nii.gz",
            )
        mapped = TO_NNUNET[label.astype(np.int64)]
        nib.save(nib.Nifti1Image(mapped, reference.affine), raw / "labelsTr" / f"{case_id}.nii.gz")
    meta = {
        "channel_names": {str(k): m.upper() for k, m in enumerate(CHANNELS)},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        "regions_class_order": [1, 2, 3],
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    splits = [{"train": tr, "val": te} for tr, te in kfold_splits(sorted(cases), folds, 0)]
    (work / "splits_final.json").write_text(json.dumps(splits, indent=2) + "\n")
    print(f"wrote {len(cases)} cases to {raw} and {folds} folds")


def _budget(run_dir: Path, fold: int) -> float:
    """The toolkit's training seconds on ``fold`` (the last ``elapsed_s`` of its log; it counts across resumes)."""
    log = run_dir / f"fold{fold}" / "training_log.csv"
    if not log.exists():
        raise SystemExit(f"error: {log}: no training log; run `meddiff seg ablate` on this fold first")
    with open(log) as handle:
        return float(list(csv.DictReader(handle))[-1]["elapsed_s"])


def _configuration_name(batch_size: int | None) -> str:
    return "2d" if batch_size is None else f"2d_b{batch_size}"


def _configuration(preprocessed: Path, batch_size: int | None) -> str:
    """nnU-Net's 2D configuration, or one that inherits it with another batch size (nnU-Net's documented way to
    change a planned value; the preprocessed data are shared)."""
    name = _configuration_name(batch_size)
    if batch_size is None:
        return name
    plans_file = preprocessed / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    if name not in plans["configurations"]:
        plans["configurations"][name] = {"inherits_from": "2d", "batch_size": batch_size}
        plans_file.write_text(json.dumps(plans, indent=2) + "\n")
    return name


def _results(work: Path, configuration: str) -> Path:
    return work / "results" / DATASET / f"{TRAINER}__nnUNetPlans__{configuration}"


def run(work: Path, venv: Path, folds: list[int], budget_from: Path | float, batch_size: int | None) -> None:
    env, bin_ = _env(work), venv / "bin"
    preprocessed = work / "preprocessed" / DATASET
    if not (preprocessed / "nnUNetPlans.json").exists():
        subprocess.run(
            [bin_ / "nnUNetv2_plan_and_preprocess", "-d", "501", "-c", "2d", "-np", "2"], env=env, check=True
        )
    (preprocessed / "splits_final.json").write_text((work / "splits_final.json").read_text())
    configuration = _configuration(preprocessed, batch_size)
    site = subprocess.run(
        [bin_ / "python", "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.copy(ROOT / "benchmarks" / "nnunet_budget_trainer.py", Path(site) / "training/nnUNetTrainer/variants")
    timing_file = work / f"train_seconds_{configuration}.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    for fold in folds:
        if (_results(work, configuration) / f"fold_{fold}" / "validation" / "summary.json").exists():
            continue  # finished (a fold stopped part-way starts again: the budget is measured in its first epoch)
        budget = budget_from if isinstance(budget_from, float) else _budget(budget_from, fold)
        fold_env = {**env, "MEDDIFF_NNUNET_BUDGET_S": str(budget), "nnUNet_n_proc_DA": "1"}
        started = time.time()
        command = [bin_ / "nnUNetv2_train", "501", configuration, str(fold), "-tr", TRAINER, "-device", "cpu"]
        subprocess.run(command, env=fold_env, check=True)
        timing[str(fold)] = {"budget_s": budget, "train_and_validate_s": round(time.time() - started, 1)}
        timing_file.write_text(json.dumps(timing, indent=2) + "\n")


def score(
    work: Path,
    out: Path,
    batch_size: int | None,
    against: Path | None,
    include: Path | None = None,
    post: bool = False,
) -> None:
    """Score nnU-Net's predictions (``post``: after the toolkit's post-processing, as ``nnunet_pp``, written beside
    the plain rows) and compare them with the toolkit's."""
    name = "nnunet_pp" if post else "nnunet"
    cases = {c.case_id: c for c in read_dataset(CASES) if c.label is not None}
    splits = json.loads((work / "splits_final.json").read_text())
    configuration = _configuration_name(batch_size)
    earlier = {r["case_id"]: r for r in read_csv(include)} if include is not None else {}
    rows = []
    for fold, split in enumerate(splits):
        for case_id in split["val"]:
            path = _results(work, configuration) / f"fold_{fold}" / "validation" / f"{case_id}.nii.gz"
            if not path.exists():
                if case_id in earlier:  # scored in an earlier run whose predictions this machine lacks
                    rows.append({**earlier[case_id], "fold": fold})
                continue
            subject, label = reference_label(cases[case_id], CHANNELS)
            pred = FROM_NNUNET[np.asarray(nib.load(path).dataobj).astype(np.int64)]
            pred = postprocess(pred) if post else pred
            spacing = tuple(subject[modality_names(subject)[0]].spacing)
            metrics = score_case(pred, label, spacing, cases[case_id])
            rows.append({"variant": name, "fold": fold, "case_id": case_id, **metrics})
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / f"seg_{name}_per_case.csv")
    for region in ("WT", "TC", "ET"):
        values = [r[f"{region}_dice"] for r in rows if np.isfinite(r[f"{region}_dice"])]
        print(f"nnU-Net {region} Dice {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} over {len(values)} cases")
    if against is not None:
        timing_file = work / f"train_seconds_{configuration}.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        comparison = out / f"seg_{name}_vs_toolkit.json"
        if include is not None and comparison.exists():  # folds trained elsewhere keep that run's budget record
            timing = (json.loads(comparison.read_text()).get("budget") or {}) | timing
        folds = {str(r["fold"]) for r in rows}
        compare(rows, against, {f: timing[f] for f in sorted(timing) if f in folds}, comparison)


def compare(rows: list[dict], against: Path, timing: dict, path: Path) -> None:
    """nnU-Net minus the toolkit's variant (``seg ablate`` folder) on the patients both have scored, paired by
    patient (t-interval, Wilcoxon, d_z), with each fold's training budget (``timing``: fold -> its budget and
    measured seconds)."""
    if against.is_file():  # a per-case CSV of `seg ablate` (every variant): the toolkit's recipe is `full`
        ours = {r["case_id"]: r for r in read_csv(against) if r["variant"] == "full"}
        conventions = {c.case_id: c.convention for c in read_dataset(CASES)}
        for case_id, row in ours.items():  # rows written before the scoring left undelineated regions undefined
            undefine_undelineated(row, conventions[case_id])
    else:
        scores = sorted(against.glob(f"fold*/{SCORES_FILE}"))
        ours = {r["case_id"]: r for fold in scores for r in read_rows(fold)}
    theirs = {r["case_id"]: r for r in rows}
    common = sorted(set(ours) & set(theirs))
    result = {"patients": common, "budget": timing or None}
    for metric in ("WT_dice", "TC_dice", "ET_dice", "WT_hd95", "TC_hd95", "ET_hd95"):
        a, b = [ours[c][metric] for c in common], [theirs[c][metric] for c in common]
        result[metric] = {"toolkit": float(np.nanmean(a)), "nnunet": float(np.nanmean(b))}
        if len(common) >= 2:
            result[metric]["nnunet_minus_toolkit"] = paired_comparison(a, b)
        print(f"{metric}: toolkit {np.nanmean(a):.3f}, nnU-Net {np.nanmean(b):.3f} ({len(common)} patients)")
    result["per_fold"] = {}  # every fold in the table: mean Dice over its held-out patients (NaN: undelineated)
    for fold in sorted({int(theirs[c]["fold"]) for c in common}):
        cases = [c for c in common if int(theirs[c]["fold"]) == fold]
        result["per_fold"][str(fold)] = {
            "patients": cases,
            **{
                method: {m: float(np.nanmean([rows_[c][f"{m}_dice"] for c in cases])) for m in ("WT", "TC", "ET")}
                for method, rows_ in (("toolkit", ours), ("nnunet", theirs))
            },
        }
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["prepare", "run", "score"])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--venv", type=Path, default=Path.home() / "venvs" / "nnunet")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--budget-from",
        type=Path,
        help="`seg ablate` variant folder: run gives nnU-Net its per-fold training time; score compares with it "
        "(score: or its per-case CSV)",
    )
    parser.add_argument("--budget-s", type=float, help="run: this many training seconds for every fold instead")
    parser.add_argument("--include-rows", type=Path, help="score: nnU-Net rows of folds predicted elsewhere")
    parser.add_argument("--batch-size", type=int, help="instead of the planned one (a GPU's memory sets nnU-Net's)")
    parser.add_argument(
        "--postprocess", action="store_true", help="score: after the toolkit's post-processing (seg_nnunet_pp_*)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.work)
    elif args.step == "run":
        if (args.budget_from is None) == (args.budget_s is None):
            parser.error("run needs one of --budget-from and --budget-s")
        run(args.work, args.venv, args.folds, args.budget_s or args.budget_from, args.batch_size)
    else:
        score(args.work, args.out, args.batch_size, args.budget_from, args.include_rows, args.postprocess)


if __name__ == "__main__":
    main()
