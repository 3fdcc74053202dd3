"""Scoring held-out cases: predict each on its own grid, save the prediction, score it against the case's expert
label mapped to BraTS 2021. Cross-validation, ablations and the augmentation study all score here, so their
numbers are comparable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torchio as tio
from tqdm.auto import tqdm

from meddiffusion.data.labels import UNDELINEATED, to_brats2021
from meddiffusion.data.layouts import CaseFiles
from meddiffusion.eval.segmentation import LESION_BINS_ML, evaluate_segmentation
from meddiffusion.io import LABEL_KEY, load_subject, modality_names, save_nifti

METRICS = [f"{r}_{m}" for r in ("WT", "TC", "ET") for m in ("dice", "hd95", "sensitivity", "specificity")]
LESION_METRICS = [
    "lesion_sensitivity",
    *(f"{k}_{b}" for _, _, b in LESION_BINS_ML for k in ("lesion_sensitivity", "n_lesions")),
    "false_positives",
]


def reference_label(case: CaseFiles, modalities: Sequence[str]) -> tuple[tio.Subject, np.ndarray]:
    """The case's subject (those of ``modalities`` it has) and its expert label in the BraTS 2021 convention."""
    present = {m: case.images[m] for m in modalities if m in case.images}
    subject = load_subject(present, case.label, case_id=case.case_id)
    label = to_brats2021(subject[LABEL_KEY].data[0].numpy().round().astype(np.int64), case.convention, case.label)
    return subject, label


def score_case(pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...], case: CaseFiles) -> dict[str, float]:
    """Metrics of a prediction against the case's label (both BraTS 2021 numbers); the regions the case's own label
    convention does not delineate (``UNDELINEATED``) are undefined (NaN) and drop out of means and paired tests."""
    return undefine_undelineated(evaluate_segmentation(pred, label, spacing, "brats2021"), case.convention)


def undefine_undelineated(metrics: dict[str, Any], convention: str) -> dict[str, Any]:
    """``metrics`` (a case's row) with the regions that ``convention`` does not delineate set undefined (NaN), in
    place: also for rows scored before that rule (BRATS 2012's ET was then scored as if absent)."""
    for region in UNDELINEATED.get(convention, ()):
        metrics.update({k: float("nan") for k in metrics if k.startswith(f"{region}_")})
    return metrics


def evaluate_cases(
    predict: Callable[[tio.Subject], np.ndarray],
    cases: dict[str, CaseFiles],
    test_ids: Sequence[str],
    pred_dir: Path,
    modalities: Sequence[str],
) -> list[dict[str, Any]]:
    """Predict every test case on its own grid, save it, and score it against its expert label (BraTS 2021)."""
    pred_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case_id in tqdm(test_ids, desc="predict and score", leave=False):
        case = cases[case_id]
        subject, label = reference_label(case, modalities)
        rows.append({"case_id": case_id, **_save_and_score(predict(subject), subject, label, case, pred_dir)})
    return rows


def _save_and_score(
    pred: np.ndarray, subject: tio.Subject, label: np.ndarray, case: CaseFiles, pred_dir: Path
) -> dict[str, float]:
    """Write the prediction beside the run and return its metrics (the table's columns)."""
    reference = subject[modality_names(subject)[0]]
    path = pred_dir / f"{subject['case_id']}.nii.gz"
    save_nifti(pred.astype(np.uint8), reference.affine, path, force=True, label=True)
    metrics = score_case(pred, label, tuple(reference.spacing), case)
    return {k: metrics[k] for k in (*METRICS, *LESION_METRICS)}
