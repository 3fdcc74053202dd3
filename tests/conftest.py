"""Shared fixtures: the embedded real MRI (cropped for speed) and small synthetic phantoms for maths tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from meddiffusion.io import load_image
from meddiffusion.sample_data import embedded_case


@pytest.fixture(scope="session")
def case_paths() -> dict[str, Path]:
    return embedded_case()


@pytest.fixture(scope="session")
def real_crop(tmp_path_factory, case_paths) -> dict[str, Path]:
    """A 64 x 64 x 32 crop of the embedded real case around the tumour, as NIfTI, all modalities + label.

    Keeps the real affine (origin moved to the crop's first voxel), so geometry tests use real headers.
    """
    folder = tmp_path_factory.mktemp("real_crop")
    label = load_image(case_paths["label"], label=True)
    coords = np.argwhere(label.data[0].numpy() > 0)
    center = coords.mean(0).astype(int)
    start = np.clip(center - np.array([32, 32, 16]), 0, np.array(label.spatial_shape) - [64, 64, 32])
    window = tuple(slice(s, s + n) for s, n in zip(start, (64, 64, 32), strict=True))
    out = {}
    for name, path in case_paths.items():
        image = load_image(path, label=name == "label")
        affine = image.affine.copy()
        affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
        data = image.data[0].numpy()[window]
        target = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.int16 if name == "label" else np.float32), affine), target)
        out[name] = target
    return out


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path
