"""The floor every learned segmenter must beat: a FLAIR intensity threshold.

Tumour and oedema are bright on FLAIR; thresholding the brain-normalised FLAIR (the same normalisation the
networks see) and keeping the larger components gives a whole-tumour mask with no learning beyond one number,
fitted on the training cases. It predicts oedema only (label 2), so its tumour-core and enhancing scores are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

THRESHOLDS = np.round(np.arange(0.40, 0.96, 0.025), 3)


def threshold_mask(flair: np.ndarray, threshold: float, min_voxels: int = 500) -> np.ndarray:
    """Voxels above ``threshold`` (normalised FLAIR), components smaller than ``min_voxels`` removed."""
    mask = flair > threshold
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= min_voxels))
    return mask


def fit_threshold(flairs: Sequence[np.ndarray], whole_tumours: Sequence[np.ndarray]) -> float:
    """The threshold with the best mean whole-tumour Dice over the training cases."""
    scores = []
    for t in THRESHOLDS:
        dice = []
        for flair, wt in zip(flairs, whole_tumours, strict=True):
            pred = threshold_mask(flair, t)
            dice.append(2 * (pred & wt).sum() / max(pred.sum() + wt.sum(), 1))
        scores.append(np.mean(dice))
    return float(THRESHOLDS[int(np.argmax(scores))])


def predict_threshold(flair: np.ndarray, threshold: float) -> np.ndarray:
    """BraTS 2021 labels: 2 (oedema) where the threshold fires, else 0."""
    return np.where(threshold_mask(flair, threshold), 2, 0).astype(np.uint8)
