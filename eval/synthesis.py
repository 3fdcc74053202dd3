"""Metrics for synthetic cases: lesion-size fidelity, intensity realism, memorisation."""

from __future__ import annotations

import numpy as np
from scipy import stats

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
