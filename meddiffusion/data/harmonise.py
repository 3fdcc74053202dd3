"""Per-site intensity harmonisation (Nyúl & Udupa 1999): a site fits landmarks (percentiles inside the brain) on
its own cases and maps every image piecewise-linearly from them onto one common scale, so that sites whose
scanners and protocols shift intensities feed a federated model comparable inputs. Applied after the per-volume
normalisation of ``data.prepare``; the federated trainer applies it at each site, the segmenter at prediction.

Written here: TorchIO's ``HistogramStandardization.train`` reads image files, while a site's cases are already
loaded and normalised in memory; the mapping itself is a few lines of ``np.interp``.
"""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio

from meddiffusion.io import modality_names

#: the landmarks' percentiles inside the brain; the common scale maps percentile p to p / 100
LANDMARKS = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def fit_landmarks(subjects: list[tio.Subject]) -> dict[str, np.ndarray]:
    """Per modality, the mean over a site's cases of each volume's brain percentiles at ``LANDMARKS``."""
    out: dict[str, np.ndarray] = {}
    for name in modality_names(subjects[0]):
        rows = []
        for subject in subjects:
            volume = subject[name].data[0].numpy()
            brain = volume[volume != 0]
            if brain.size:
                rows.append(np.percentile(brain, LANDMARKS))
        if rows:
            out[name] = np.mean(rows, axis=0)
    return out


def harmonise(subject: tio.Subject, landmarks: dict[str, np.ndarray]) -> tio.Subject:
    """Map each modality's brain intensities piecewise-linearly from the site's landmarks to the common scale
    (the landmarks' own percentile ranks in [0, 1]), in place; the background stays 0."""
    standard = np.asarray(LANDMARKS) / 100.0
    for name, site in landmarks.items():
        if name not in subject:
            continue
        volume = subject[name].data[0].numpy()
        brain = volume != 0
        mapped = np.zeros_like(volume)
        # beyond the outer landmarks the map continues with the slope of its first / last segment
        low = standard[0] + (volume - site[0]) * (standard[1] - standard[0]) / max(site[1] - site[0], 1e-6)
        high = standard[-1] + (volume - site[-1]) * (standard[-1] - standard[-2]) / max(site[-1] - site[-2], 1e-6)
        inside = np.interp(volume, site, standard)
        mapped[brain] = np.where(volume < site[0], low, np.where(volume > site[-1], high, inside))[brain]
        subject[name].set_data(torch.from_numpy(mapped.astype(np.float32))[None])
    return subject
