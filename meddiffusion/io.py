"""Reading and writing volumes, and the subject object that carries them through the toolkit.

A subject is TorchIO's ``Subject``: image channels as ``ScalarImage`` entries and an optional ``LabelMap``
under the key ``label``, each with its own affine, so spacing and orientation are never dropped. What this
module adds is validation with errors a user can act on, atomic writes, and provenance sidecars.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from meddiffusion.errors import MeddiffError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
READ_SUFFIXES = (*NIFTI_SUFFIXES, ".mha", ".mhd")
LABEL_KEY = "label"


def image_suffix(path: str | Path) -> str:
    """Return the recognised image suffix of ``path`` (``.nii.gz`` counts as one)."""
    name = Path(path).name.lower()
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def strip_suffix(path: str | Path) -> Path:
    """``a/b.nii.gz`` -> ``a/b``: the stem that sidecar files are named after."""
    path = Path(path)
    suffix = image_suffix(path)
    return path.with_name(path.name[: -len(suffix)]) if suffix else path.with_suffix("")


def load_image(path: str | Path, label: bool = False, allow_2d: bool = False) -> tio.Image:
    """Read one NIfTI or MetaImage volume and check that it is usable.

    Raises ``MeddiffError`` naming the file for a missing, unreadable or non-image file, a 2D image,
    NaN/Inf voxels, a singular affine, or (for ``label=True``) non-integer values.
    """
    path = Path(path)
    if not path.exists():
        raise MeddiffError("file not found", path)
    if not image_suffix(path):
        raise MeddiffError(f"not a NIfTI or MetaImage file (expected one of {', '.join(READ_SUFFIXES)})", path)
    cls = tio.LabelMap if label else tio.ScalarImage
    try:
        with warnings.catch_warnings():  # TorchIO warns before falling back from SimpleITK to nibabel
            warnings.simplefilter("ignore")
            image = cls(path)
            image.load()
    except Exception as exc:  # nibabel/SimpleITK raise many types for truncated or foreign files
        raise MeddiffError(f"cannot be read as an image ({type(exc).__name__}: {exc})", path) from exc
    _check_geometry(image, path, allow_2d)
    if bad := _count_nonfinite(path):
        raise MeddiffError(f"contains {bad} NaN/Inf voxels", path)
    data = image.data
    if label:
        if data.is_floating_point() and not torch.equal(data, data.round()):
            raise MeddiffError("label map has non-integer values", path)
        image.set_data(data.round().to(torch.int16) if data.is_floating_point() else data.to(torch.int16))
    else:
        image.set_data(data.float())
    return image


def _count_nonfinite(path: Path) -> int:
    """NaN/Inf voxels as stored on disk (TorchIO's readers turn NaN into 0, so the file is asked directly)."""
    if image_suffix(path) in NIFTI_SUFFIXES:
        proxy = nib.load(str(path))
        if not np.issubdtype(proxy.get_data_dtype(), np.floating):
            return 0
        data = np.asanyarray(proxy.dataobj)
    else:
        import SimpleITK as sitk

        data = sitk.GetArrayViewFromImage(sitk.ReadImage(str(path)))
        if not np.issubdtype(data.dtype, np.floating):
            return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def _check_geometry(image: tio.Image, path: Path, allow_2d: bool) -> None:
    spatial = image.spatial_shape
    if not allow_2d and min(spatial) < 2:
        raise MeddiffError(f"is 2D (shape {tuple(spatial)}); a 3D volume is needed", path)
    if image.data.shape[0] != 1:
        raise MeddiffError(f"has {image.data.shape[0]} channels; one volume per file is expected", path)
    if abs(np.linalg.det(image.affine[:3, :3])) < 1e-8:
        raise MeddiffError("has a singular affine (zero voxel size or degenerate axes)", path)


def load_subject(
    images: Mapping[str, str | Path],
    label: str | Path | None = None,
    case_id: str | None = None,
    allow_2d: bool = False,
) -> tio.Subject:
    """Build a subject from modality files and an optional label map, all on one voxel grid."""
    if not images:
        raise MeddiffError("a subject needs at least one image")
    entries: dict[str, Any] = {name: load_image(p, allow_2d=allow_2d) for name, p in images.items()}
    if label is not None:
        entries[LABEL_KEY] = load_image(label, label=True, allow_2d=allow_2d)
    ref_name, ref = next(iter(entries.items()))
    for image in entries.values():
        if not same_grid(image, ref):
            raise MeddiffError(
                f"grid {tuple(image.spatial_shape)} / spacing {fmt_spacing(image.spacing)} differs from "
                f"{Path(ref.path).name}'s {tuple(ref.spatial_shape)} / {fmt_spacing(ref.spacing)}",
                image.path,
            )
    subject = tio.Subject(**entries)
    subject["case_id"] = case_id or strip_suffix(Path(images[ref_name])).name
    return subject


def same_grid(a: tio.Image, b: tio.Image, atol: float = 1e-3) -> bool:
    """True when two images share shape and affine (to ``atol`` mm)."""
    return tuple(a.spatial_shape) == tuple(b.spatial_shape) and np.allclose(a.affine, b.affine, atol=atol)


def fmt_spacing(spacing: tuple[float, ...]) -> str:
    return " x ".join(f"{s:.3g}" for s in spacing) + " mm"


def modality_names(subject: tio.Subject) -> list[str]:
    """Image channel names of a subject, in insertion order (the label excluded)."""
    return [k for k, v in subject.items() if isinstance(v, tio.ScalarImage)]


def check_output(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing file unless ``force``; return the path."""
    path = Path(path)
    if path.exists() and not force:
        raise MeddiffError("exists already (use --force to overwrite)", path)
    if not path.parent.exists():
        raise MeddiffError("output folder does not exist", path.parent)
    return path


def atomic_write(path: str | Path, write: Any, suffix: str | None = None) -> Path:
    """Call ``write(tmp_path)`` and move the result into place, so no partial file is ever left."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or image_suffix(path))
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_nifti(
    data: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    path: str | Path,
    force: bool = False,
    label: bool = False,
) -> Path:
    """Write a 3D array as NIfTI with ``affine`` (qform and sform), atomically."""
    path = check_output(path, force)
    if image_suffix(path) not in NIFTI_SUFFIXES:
        raise MeddiffError("output must end in .nii or .nii.gz", path)
    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    array = array.astype(np.int16 if label else np.float32)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return atomic_write(path, lambda tmp: nib.save(image, tmp))


def save_image(image: tio.Image, path: str | Path, force: bool = False) -> Path:
    """Write a TorchIO image as NIfTI on its own grid."""
    label = isinstance(image, tio.LabelMap)
    return save_nifti(image.data[0], image.affine, path, force=force, label=label)


def write_json(payload: Mapping[str, Any], path: str | Path, force: bool = True) -> Path:
    """Write JSON atomically (provenance, metadata, metric summaries)."""
    path = check_output(path, force)
    text = json.dumps(payload, indent=2, sort_keys=False, default=_json_default)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"), suffix=".json")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres (mm^3 / 1000)."""
    return float(abs(np.linalg.det(np.asarray(affine)[:3, :3])) / 1000.0)
