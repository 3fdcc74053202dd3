"""Reading and writing volumes, and the subject object that carries them through the toolkit.

A subject is TorchIO's ``Subject``: image channels as ``ScalarImage`` entries and an optional ``LabelMap``
under the key ``label``, each with its own affine, so spacing and orientation are never dropped. What this
module adds is validation with errors a user can act on, atomic writes, and provenance sidecars.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from meddiffusion.errors import MeddiffError
from meddiffusion.paths import NIFTI_SUFFIXES, check_input_file, check_output, image_suffix, strip_suffix
from meddiffusion.serialise import json_text

LABEL_KEY = "label"


def load_image(path: str | Path, label: bool = False, allow_2d: bool = False) -> tio.Image:
    """Read one NIfTI or MetaImage volume and check that it is usable.

    Raises ``MeddiffError`` naming the file for a missing, unreadable or non-image file, a 2D image,
    NaN/Inf voxels, a singular affine, or (for ``label=True``) non-integer values.
    """
    path = check_input_file(path)
    cls = tio.LabelMap if label else tio.ScalarImage
    try:
        with warnings.catch_warnings():  # TorchIO warns before falling back from SimpleITK to nibabel
            warnings.simplefilter("ignore")
            image = cls(path)
            image.load()
    except Exception as exc:  # nibabel/SimpleITK raise many types for truncated or foreign files
        raise MeddiffError(f"cannot be read as an image ({type(exc).__name__}: {exc})", path) from exc
    _check_geometry(image, path, allow_2d)
    stored = _stored_array(path)
    if stored.shape[:3] != tuple(image.spatial_shape):
        raise MeddiffError(f"holds {stored.shape} voxels but TorchIO read {tuple(image.spatial_shape)}", path)
    if np.issubdtype(stored.dtype, np.floating) and (bad := int(stored.size - np.count_nonzero(np.isfinite(stored)))):
        raise MeddiffError(f"contains {bad} NaN/Inf voxels", path)
    data = image.data
    if label:
        if data.is_floating_point() and not torch.equal(data, data.round()):
            raise MeddiffError("label map has non-integer values", path)
        image.set_data(data.round().to(torch.int16) if data.is_floating_point() else data.to(torch.int16))
    else:
        image.set_data(data.float())
    return image


def _stored_array(path: Path) -> np.ndarray:
    """The voxels as stored on disk, read by nibabel (NIfTI) or SimpleITK (MetaImage) directly.

    TorchIO's reader zero-fills a truncated integer ``.nii.gz`` without a word and turns NaN into 0, so the file
    itself is asked: a truncated or corrupt file is an error here, and NaN/Inf are counted from these values.
    """
    try:
        if image_suffix(path) in NIFTI_SUFFIXES:
            return np.asanyarray(nib.load(str(path)).dataobj)
        import SimpleITK as sitk

        return sitk.GetArrayViewFromImage(sitk.ReadImage(str(path))).transpose()
    except Exception as exc:  # EOFError, zlib.error, OSError, RuntimeError from SimpleITK...
        raise MeddiffError(f"is truncated or corrupt ({type(exc).__name__}: {exc})", path) from exc


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


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Any, suffix: str | None = None) -> Path:
    """Call ``write(tmp_path)`` and move the result into place, so no partial file is ever left. The file gets
    the mode a plain ``open`` would give it (0666 less the user's umask), not the temporary file's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or image_suffix(path))
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
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
    """Write a 3D array as NIfTI with ``affine``, atomically.

    The affine goes into the sform, and into the qform when a qform can hold it. A sheared (non-orthogonal) affine
    cannot be a qform: nibabel would store an orthogonalised one that ITK-based readers (SimpleITK, TorchIO, ITK-SNAP)
    prefer, so the written grid would move. Then the qform is left unset, every reader takes the sform, and the
    shear is kept exactly."""
    path = check_output(path, force)
    if image_suffix(path) not in NIFTI_SUFFIXES:
        raise MeddiffError("output must end in .nii or .nii.gz", path)
    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    array = array.astype(np.int16 if label else np.float32)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    if not np.allclose(image.get_qform(), affine, atol=1e-4):
        image.set_qform(None, code=0)
    return atomic_write(path, lambda tmp: nib.save(image, tmp))


def save_image(image: tio.Image, path: str | Path, force: bool = False) -> Path:
    """Write a TorchIO image as NIfTI on its own grid."""
    label = isinstance(image, tio.LabelMap)
    return save_nifti(image.data[0], image.affine, path, force=force, label=label)


def write_json(payload: Mapping[str, Any] | list, path: str | Path, force: bool = True) -> Path:
    """Write JSON atomically (provenance, metadata, metric summaries)."""
    path = check_output(path, force)
    text = json_text(payload)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"), suffix=".json")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Per-case rows written by ``write_json``: JSON holds NaN as null, read back as NaN, so rows loaded from a
    finished run (a resumed benchmark) summarise exactly like rows just computed."""
    return [{k: math.nan if v is None else v for k, v in row.items()} for row in json.loads(Path(path).read_text())]


def write_text(text: str, path: str | Path, force: bool = False) -> Path:
    """Write a text file (a report) atomically, refusing to replace one unless ``force``."""
    path = check_output(path, force)
    return atomic_write(path, lambda tmp: tmp.write_text(text), suffix=Path(path).suffix)


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in millilitres (mm^3 / 1000), from the voxel spacing in mm: every lesion and label
    volume of the toolkit is counted with this one helper."""
    return float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
