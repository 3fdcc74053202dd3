"""Preparing labelled cases from different sources so that they train and are compared together.

Labels are mapped to the BraTS 2021 numbers (``data.labels``); every modality is normalised inside the brain
to [0, 1] by its 0.5-99.5 percentiles (this serves raw scanner intensities and images already z-scored inside
the brain alike; the background becomes 0); the volume is optionally resampled to a working spacing (labels
by nearest neighbour, TorchIO). Segmentation and synthesis both start here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio

from meddiffusion.data.labels import UNDELINEATED, to_brats2021
from meddiffusion.data.layouts import CaseFiles
from meddiffusion.io import LABEL_KEY, modality_names
from meddiffusion.transforms import brain_mask, normalise, robust_range

#: subject key: the regions (e.g. ``("ET",)``) the case's label convention does not delineate
UNDELINEATED_KEY = "undelineated"


def brain_normalise(volume: np.ndarray) -> np.ndarray:
    """[0, 1] by the brain's 0.5-99.5 percentiles (``transforms.brain_mask``: every voxel that differs from the
    background value, 0 for scanner images, a negative constant for z-scored ones); 0 outside the brain."""
    brain = brain_mask(volume)
    if not brain.any():
        return np.zeros(volume.shape, dtype=np.float32)
    out = normalise(volume, brain_range(volume, brain))
    out[~brain] = 0.0
    return out


def brain_range(volume: np.ndarray, brain: np.ndarray | None = None) -> tuple[float, float]:
    """The intensities ``brain_normalise`` maps to 0 and 1 (``transforms.denormalise`` inverts it)."""
    return robust_range(volume, brain_mask(volume) if brain is None else brain)


def prepare_subject(subject: tio.Subject, convention: str | None, spacing: Sequence[float] | None) -> tio.Subject:
    """Normalise every modality, relabel to BraTS 2021 (if labelled), resample to ``spacing`` (if given)."""
    entries = {}
    for name in modality_names(subject):
        image = subject[name]
        entries[name] = tio.ScalarImage(
            tensor=torch.from_numpy(brain_normalise(image.data[0].numpy().astype(np.float32)))[None],
            affine=image.affine,
        )
    if LABEL_KEY in subject:
        label = subject[LABEL_KEY]
        mapped = to_brats2021(label.data[0].numpy().round().astype(np.int64), convention or "brats2021", label.path)
        entries[LABEL_KEY] = tio.LabelMap(tensor=torch.from_numpy(mapped.astype(np.int16))[None], affine=label.affine)
    prepared = tio.Subject(**entries)
    prepared["case_id"] = subject.get("case_id", "case")
    if spacing is not None:
        prepared = tio.Resample(tuple(float(s) for s in spacing))(prepared)
    return prepared


def load_case(
    case: CaseFiles, modalities: Sequence[str], spacing: Sequence[float] | None, optional: Sequence[str] = ()
) -> tio.Subject:
    """Read and prepare one case with exactly ``modalities``, in that order. A missing modality is an error naming
    it, unless it is ``optional``: then it is all zeros (what a normalised image has outside the brain), the input
    a model trained with modality dropout (``segmentation.data``) expects for a modality a case lacks. The subject
    carries the regions its labels do not delineate (``UNDELINEATED_KEY``), for the losses to leave out."""
    present = tuple(m for m in modalities if m in case.images or m not in optional)
    prepared = prepare_subject(case.load(present), case.convention, spacing)
    subject = with_modalities(prepared, modalities)
    subject[UNDELINEATED_KEY] = UNDELINEATED.get(case.convention, ())
    return subject


def with_modalities(subject: tio.Subject, modalities: Sequence[str]) -> tio.Subject:
    """``subject`` with exactly ``modalities`` in that order; absent ones all zeros on the first image's grid."""
    first = subject[modality_names(subject)[0]]
    entries = {
        m: subject[m] if m in subject else tio.ScalarImage(tensor=torch.zeros_like(first.data), affine=first.affine)
        for m in modalities
    }
    if LABEL_KEY in subject:
        entries[LABEL_KEY] = subject[LABEL_KEY]
    out = tio.Subject(**entries)
    out["case_id"] = subject.get("case_id", "case")
    return out
