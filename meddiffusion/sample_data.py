"""Real MRI embedded in the package, so the demo and the tests run on a fresh clone with no download.

One BRATS 2012 glioma case (HG0015): T1, T1c, T2, FLAIR and the expert label, 1 mm isotropic, scanner
intensities. Attribution and licence: ``resources/brats2012_HG0015/README.md``. It is held out from the
training of the shipped super-resolution weights, so the demo compares against a reference it never saw.
"""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"
HG0015 = RESOURCES / "brats2012_HG0015"
HG0015_MODALITIES = {"t1": "T1", "t1ce": "T1C", "t2": "T2", "flair": "FLAIR"}


def embedded_case() -> dict[str, Path]:
    """Paths of the embedded case: modality name (BraTS 2021 naming) -> file, plus ``label``."""
    paths = {name: HG0015 / f"BRATS_HG0015_{suffix}.mha" for name, suffix in HG0015_MODALITIES.items()}
    paths["label"] = HG0015 / "BRATS_HG0015_truth.mha"
    return paths
