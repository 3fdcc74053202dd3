"""Tumour label conventions and the BraTS evaluation regions.

BraTS 2021: 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing. BraTS 2023: 1 NCR, 2 ED, 3 ET.
BRATS 2015: 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing. BRATS 2012: 1 oedema, 2 core.
Regions: whole tumour (WT), tumour core (TC), enhancing tumour (ET).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddiffusion.errors import MeddiffError

REGIONS: dict[str, dict[str, tuple[int, ...]]] = {
    "brats2021": {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    "brats2023": {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
}
#: label maps to the BraTS 2021 convention
TO_BRATS2021: dict[str, dict[int, int]] = {
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 4},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 4},
    "brats2015": {0: 0, 1: 1, 2: 2, 3: 1, 4: 4},
    "brats2012": {0: 0, 1: 2, 2: 1},
}
#: regions a convention's labels do not delineate: BRATS 2012 marks the whole core as one class (mapped to 1), so
#: its enhancing part is unknown, not absent; scoring ET there would count every correct ET voxel as a false positive
UNDELINEATED: dict[str, tuple[str, ...]] = {"brats2012": ("ET",)}


def region_masks(label: np.ndarray, convention: str = "brats2021") -> dict[str, np.ndarray]:
    """Boolean WT/TC/ET masks of a label map in ``convention``."""
    if convention not in REGIONS:
        raise MeddiffError(f"unknown label convention {convention!r}; use one of {', '.join(REGIONS)}")
    return {name: np.isin(label, values) for name, values in REGIONS[convention].items()}


def check_labels(label: np.ndarray, convention: str, source: str | Path | None = None) -> None:
    """Raise, naming ``source`` (the file), if ``label`` holds values outside ``convention``: such voxels would
    belong to no region and vanish from training and scores without a word."""
    mapping = TO_BRATS2021.get(convention)
    if mapping is None:
        raise MeddiffError(f"unknown label convention {convention!r}; use one of {', '.join(TO_BRATS2021)}")
    present = set(np.unique(label).astype(int).tolist())
    if unknown := present - set(mapping):
        counts = ", ".join(f"{v}: {int((label == v).sum())} voxels" for v in sorted(unknown))
        raise MeddiffError(
            f"label values {sorted(unknown)} ({counts}) are not part of the {convention} convention "
            f"(its labels: {sorted(mapping)})",
            source,
        )


def to_brats2021(label: np.ndarray, convention: str, source: str | Path | None = None) -> np.ndarray:
    """Relabel a map to BraTS 2021 numbers; unknown labels are an error naming ``source``, not silently dropped."""
    check_labels(label, convention, source)
    mapping = TO_BRATS2021[convention]
    lut = np.zeros(max(mapping) + 1, dtype=np.int16)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[label.astype(np.int64)]
