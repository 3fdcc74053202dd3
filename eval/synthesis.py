"""Metrics for synthetic cases: lesion-size fidelity, intensity realism, seams, a real-vs-synthetic classifier,
memorisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats
from skimage.feature import graycomatrix, graycoprops

from meddiffusion.errors import MeddiffError
from meddiffusion.io import voxel_volume_ml


def lesion_volume_ml(label: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Volume of all non-zero label voxels in mL."""
    return float(np.count_nonzero(label)) * voxel_volume_ml(spacing)


def size_fidelity(requested_ml: float, label: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Requested vs measured lesion volume; ``error_pct`` is signed, relative to the request."""
    if requested_ml <= 0:
        raise MeddiffError(f"requested volume must be > 0 mL, got {requested_ml}")
    measured = lesion_volume_ml(label, spacing)
    return {
        "requested_ml": requested_ml,
        "measured_ml": measured,
        "error_pct": 100.0 * (measured - requested_ml) / requested_ml,
    }


def intensity_distance(synthetic: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Distance between the intensity distributions of synthetic and real lesion voxels (same units):
    1-D Wasserstein distance and the two-sample Kolmogorov-Smirnov statistic."""
    synthetic, real = np.ravel(synthetic), np.ravel(real)
    if synthetic.size == 0 or real.size == 0:
        raise MeddiffError("intensity distance needs voxels on both sides")
    ks = stats.ks_2samp(synthetic, real)
    return {
        "wasserstein": float(stats.wasserstein_distance(synthetic, real)),
        "ks": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
    }


def nearest_training_distance(sample: np.ndarray, training: np.ndarray) -> dict[str, float]:
    """Memorisation check: RMS distance from a synthetic slice to its nearest training slice.

    ``training`` is ``[N, H, W]`` (same size as ``sample``); a distance near 0 means the generator copied.
    """
    if training.ndim != sample.ndim + 1 or training.shape[1:] != sample.shape:
        raise MeddiffError(f"training slices {training.shape} do not match the sample {sample.shape}")
    d = np.sqrt(((training - sample[None]) ** 2).reshape(len(training), -1).mean(axis=1))
    return {"nearest_rms": float(d.min()), "nearest_index": int(d.argmin()), "median_rms": float(np.median(d))}


#: the ring around a lesion whose intensities and edges the realism measures read (voxels)
RIM = 3
GLCM_LEVELS = 32


def _ring(mask: np.ndarray, width: int = RIM) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


def edge_strength(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean gradient magnitude on the lesion's boundary (its outer layer and the first layer outside): how sharp
    the transition into the surrounding tissue is."""
    mask = mask.astype(bool)
    boundary = mask & ~ndimage.binary_erosion(mask) | (ndimage.binary_dilation(mask) & ~mask)
    if not boundary.any():
        raise MeddiffError("edge strength needs a non-empty lesion mask")
    magnitude = np.sqrt(sum(g**2 for g in np.gradient(image.astype(np.float64))))
    return float(magnitude[boundary].mean())


def seam_ratio(synthetic: Sequence[tuple[np.ndarray, np.ndarray]], real: Sequence[tuple[np.ndarray, np.ndarray]]):
    """Mean boundary edge strength of painted lesions over that of real tumours ((image, mask) pairs, images on
    one intensity scale): 1 means edges as sharp as real ones, above 1 sharper (a visible seam)."""
    painted = np.mean([edge_strength(i, m) for i, m in synthetic])
    return float(painted / np.mean([edge_strength(i, m) for i, m in real]))


def lesion_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What a reader of one lesion sees, as numbers: first-order statistics of the lesion and of its rim (mean, sd,
    10/50/90th percentiles, skewness, kurtosis), their contrast, the boundary edge strength, and grey-level
    co-occurrence texture of the lesion's bounding box (contrast, homogeneity, energy, correlation;
    scikit-image). ``image`` on a common intensity scale (e.g. normalised in the brain)."""
    mask = _lesion(mask)
    image = image.astype(np.float64)
    inside, rim = image[mask], image[_ring(mask)]
    coords = np.argwhere(mask)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(coords.min(0), coords.max(0), strict=True))
    patch = image[box]
    lo, hi = np.percentile(patch, [1, 99])
    levels = np.clip((patch - lo) / max(hi - lo, 1e-9) * (GLCM_LEVELS - 1), 0, GLCM_LEVELS - 1).astype(np.uint8)
    texture = []
    angles = [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    planes = [levels[..., k] for k in range(levels.shape[-1])] if levels.ndim == 3 else [levels]
    # one co-occurrence matrix summed over the box's planes (graycoprops normalises it)
    glcm = sum(graycomatrix(p, [1], angles, levels=GLCM_LEVELS, symmetric=True) for p in planes).astype(np.float64)
    for prop in ("contrast", "homogeneity", "energy", "correlation"):
        texture.append(float(np.nan_to_num(graycoprops(glcm, prop).mean())))
    contrast = float(inside.mean() - rim.mean()) if rim.size else 0.0
    return np.asarray([*_first_order(inside), *_first_order(rim), contrast, edge_strength(image, mask), *texture])


def interior_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The first-order statistics of the lesion's own voxels, nothing of its surroundings: a classifier on these
    judges the painting alone, where ``lesion_features`` also sees the placement (rim, edge, bounding box)."""
    return np.asarray(_first_order(image.astype(np.float64)[_lesion(mask)]))


def _lesion(mask: np.ndarray) -> np.ndarray:
    mask = mask.astype(bool)
    if not mask.any():
        raise MeddiffError("lesion features need a non-empty lesion mask")
    return mask


def _first_order(values: np.ndarray) -> list[float]:
    """Mean, sd, 10/50/90th percentiles, skewness, kurtosis."""
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    sd = float(values.std())
    skew = float(stats.skew(values)) if sd > 0 else 0.0
    kurt = float(stats.kurtosis(values)) if sd > 0 else 0.0
    return [float(values.mean()), sd, p10, p50, p90, skew, kurt]


def realism_auc(
    real: np.ndarray, synthetic: np.ndarray, real_groups: Sequence, synthetic_groups: Sequence, folds: int = 5
) -> float:
    """Cross-validated ROC AUC of a logistic regression telling real lesions from synthetic ones by their
    ``lesion_features`` (rows). Folds split by patient (``*_groups``), so a patient's real and painted lesions
    are never on both sides of a fold. 0.5: indistinguishable; 1: always told apart.

    scikit-learn's standardiser, logistic regression, grouped folds and AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([real, synthetic])
    y = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    groups = np.asarray([*real_groups, *synthetic_groups])
    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise MeddiffError("the realism classifier needs lesions from at least 2 patients")
    scores = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=min(folds, n_groups)).split(x, y, groups):
        if len(set(y[train])) < 2:
            scores[test] = 0.5
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        scores[test] = model.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, scores))
