"""Patient-level splits with a fixed seed: every case of one patient falls on one side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meddiffusion.data.layouts import patient_id
from meddiffusion.errors import MeddiffError


def _patients(case_ids: Sequence[str], seed: int) -> list[str]:
    patients = sorted({patient_id(c) for c in case_ids})
    order = np.random.default_rng(seed).permutation(len(patients))
    return [patients[i] for i in order]


def train_test_split(case_ids: Sequence[str], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split case ids into (train, test) by patient; at least one patient on each side."""
    patients = _patients(case_ids, seed)
    if len(patients) < 2:
        raise MeddiffError(f"need at least 2 patients to split, got {len(patients)}")
    n_test = min(max(1, round(test_fraction * len(patients))), len(patients) - 1)
    test_patients = set(patients[:n_test])
    test = sorted(c for c in case_ids if patient_id(c) in test_patients)
    return sorted(c for c in case_ids if patient_id(c) not in test_patients), test


def kfold_splits(case_ids: Sequence[str], k: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """k folds of (train, test) by patient; ``k`` = number of patients gives leave-one-patient-out."""
    patients = _patients(case_ids, seed)
    if not 2 <= k <= len(patients):
        raise MeddiffError(f"k must be between 2 and the number of patients ({len(patients)}), got {k}")
    folds = [set(patients[i::k]) for i in range(k)]
    return [
        (sorted(c for c in case_ids if patient_id(c) not in fold), sorted(c for c in case_ids if patient_id(c) in fold))
        for fold in folds
    ]
