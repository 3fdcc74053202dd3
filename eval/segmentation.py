"""Segmentation metrics: overlap and surface distances (MONAI), confusion-based rates, and lesion-wise detection.

Empty-case rules, as in the BraTS evaluation: when reference and prediction are both empty, Dice = 1 and
HD95 = ASD = 0; when exactly one is empty, Dice = 0 and HD95 = ASD = ``EMPTY_HD95`` (373.13 mm, the value
BraTS 2021 assigns: the diagonal of its 240 x 240 x 155 mm volume). Sensitivity with an empty reference and
precision with an empty prediction are undefined and reported as NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage

from meddiffusion.data.labels import region_masks
from meddiffusion.errors import MeddiffError
from meddiffusion.io import voxel_volume_ml

EMPTY_HD95 = 373.13
LESION_BINS_ML = ((0.0, 1.0, "<1mL"), (1.0, 10.0, "1-10mL"), (10.0, float("inf"), ">10mL"))


def check_label_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise MeddiffError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    for name, arr in (("prediction", pred), ("reference", ref)):
        if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
            raise MeddiffError(f"{name} is not an integer label map")


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Dice, HD95 (mm), ASD (mm, symmetric), sensitivity, specificity, precision, volume difference (mL)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    tp = float(np.sum(pred & ref))
    fp = float(np.sum(pred & ~ref))
    fn = float(np.sum(~pred & ref))
    tn = float(pred.size - tp - fp - fn)
    voxel_ml = voxel_volume_ml(spacing)
    out = {
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "volume_diff_ml": (tp + fp - tp - fn) * voxel_ml,
        "ref_volume_ml": (tp + fn) * voxel_ml,
    }
    if not ref.any() and not pred.any():
        return {"dice": 1.0, "hd95": 0.0, "asd": 0.0, **out}
    if not ref.any() or not pred.any():
        return {"dice": 0.0, "hd95": EMPTY_HD95, "asd": EMPTY_HD95, **out}
    out["dice"] = 2 * tp / (2 * tp + fp + fn)
    p = torch.from_numpy(pred)[None, None]
    r = torch.from_numpy(ref)[None, None]
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument it passes to itself internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        out["hd95"] = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp))
        out["asd"] = float(compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=sp))
    return {"dice": out.pop("dice"), "hd95": out.pop("hd95"), "asd": out.pop("asd"), **out}


def lesion_detection(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Lesion-wise detection on connected components (26-connectivity).

    A reference lesion is detected when any predicted voxel overlaps it; a predicted component touching no
    reference lesion is a false positive. Sensitivity is broken down by reference lesion volume, because
    small and rare lesions are what augmentation is meant to help.
    """
    pred, ref = pred.astype(bool), ref.astype(bool)
    structure = np.ones((3,) * ref.ndim, dtype=bool)
    ref_cc, n_ref = ndimage.label(ref, structure)
    pred_cc, n_pred = ndimage.label(pred, structure)
    voxel_ml = voxel_volume_ml(spacing)
    sizes = ndimage.sum(ref, ref_cc, index=np.arange(1, n_ref + 1)) * voxel_ml if n_ref else np.array([])
    hit = ndimage.maximum(pred, ref_cc, index=np.arange(1, n_ref + 1)) if n_ref else np.array([])
    touched = ndimage.maximum(ref, pred_cc, index=np.arange(1, n_pred + 1)) if n_pred else np.array([])
    out = {
        "n_lesions": float(n_ref),
        "lesion_sensitivity": float(np.mean(hit)) if n_ref else float("nan"),
        "false_positives": float(np.sum(~np.asarray(touched, dtype=bool))) if n_pred else 0.0,
    }
    for lo, hi, name in LESION_BINS_ML:
        in_bin = (sizes >= lo) & (sizes < hi)
        out[f"n_lesions_{name}"] = float(in_bin.sum())
        out[f"lesion_sensitivity_{name}"] = float(np.mean(np.asarray(hit)[in_bin])) if in_bin.any() else float("nan")
    return out


def evaluate_segmentation(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    convention: str | None = "brats2021",
    labels: tuple[int, ...] | None = None,
) -> dict[str, float]:
    """Metrics for every BraTS region (``WT_dice``, ``TC_hd95``, ...) and every label (``label2_dice``, ...).

    With ``convention=None`` the foreground (any label > 0) is evaluated as one region named ``FG``.
    Keys without a prefix (``dice``, ``hd95``, ...) repeat the whole-tumour / foreground values.
    """
    check_label_pair(pred, ref)
    pred, ref = pred.astype(np.int64), ref.astype(np.int64)
    regions = {"FG": (pred > 0, ref > 0)}
    if convention is not None:
        p_regions, r_regions = region_masks(pred, convention), region_masks(ref, convention)
        regions = {name: (p_regions[name], r_regions[name]) for name in r_regions}
    if labels is None:
        labels = tuple(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v > 0)
    out: dict[str, float] = {}
    for name, (p, r) in regions.items():
        out.update({f"{name}_{k}": v for k, v in binary_metrics(p, r, spacing).items()})
    for value in labels:
        for k, v in binary_metrics(pred == value, ref == value, spacing).items():
            if k in ("dice", "hd95"):
                out[f"label{value}_{k}"] = v
    first = next(iter(regions))
    out.update({k.removeprefix(f"{first}_"): v for k, v in list(out.items()) if k.startswith(f"{first}_")})
    out.update(lesion_detection(*regions[first], spacing))
    return out
