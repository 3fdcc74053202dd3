"""``meddiff info``: what a volume is, as a user checks it before feeding it to a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from meddiffusion.errors import MeddiffError
from meddiffusion.io import load_image, voxel_volume_ml

MAX_LABELS = 64


def looks_like_label(data: np.ndarray) -> bool:
    """Integer-valued with few distinct values: treated as a label map."""
    if np.issubdtype(data.dtype, np.floating) and not np.array_equal(data, np.round(data)):
        return False
    return np.unique(data).size <= MAX_LABELS and data.min() >= 0


def describe(path: str | Path, label: bool | None = None) -> dict[str, Any]:
    """Shape, spacing, orientation, dtype, intensity range, affine; labels with voxel counts and mL."""
    image = load_image(path)
    stored_dtype = _stored_dtype(Path(path))
    data = image.data[0].numpy()
    if label and not looks_like_label(data):
        raise MeddiffError(
            f"--label: this is not a label map ({np.unique(data).size} distinct values, range {data.min():g} .. "
            f"{data.max():g}; a label map holds at most {MAX_LABELS} non-negative integers)",
            path,
        )
    is_label = looks_like_label(data) if label is None else label
    info: dict[str, Any] = {
        "file": str(path),
        "shape": list(image.spatial_shape),
        "spacing_mm": [round(float(s), 6) for s in image.spacing],
        "orientation": "".join(image.orientation),
        "dtype": stored_dtype,
        "min": float(data.min()),
        "max": float(data.max()),
        "mean": float(data.mean()),
        "affine": np.round(image.affine, 6).tolist(),
        "kind": "label map" if is_label else "image",
    }
    if is_label:
        values, counts = np.unique(data.astype(np.int64), return_counts=True)
        voxel_ml = voxel_volume_ml(image.spacing)
        info["labels"] = {
            int(v): {"voxels": int(c), "volume_ml": round(float(c) * voxel_ml, 3)}
            for v, c in zip(values, counts, strict=True)
        }
    return info


def _stored_dtype(path: Path) -> str:
    """The on-disk data type (the loaded tensor is float32 whatever the file holds)."""
    try:
        return str(nib.load(str(path)).get_data_dtype())
    except nib.filebasedimages.ImageFileError:  # MetaImage: ask SimpleITK
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return sitk.GetPixelIDValueAsString(reader.GetPixelID())


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"file:        {info['file']}",
        f"kind:        {info['kind']}",
        f"shape:       {' x '.join(map(str, info['shape']))}",
        f"spacing:     {' x '.join(f'{s:g}' for s in info['spacing_mm'])} mm",
        f"orientation: {info['orientation']}",
        f"dtype:       {info['dtype']}",
        f"range:       {info['min']:g} .. {info['max']:g} (mean {info['mean']:g})",
        "affine:      " + "\n             ".join(" ".join(f"{v:10.4f}" for v in row) for row in info["affine"]),
    ]
    for value, entry in info.get("labels", {}).items():
        lines.append(f"label {value:>3}:   {entry['voxels']:>10} voxels  {entry['volume_ml']:>10.3f} mL")
    return "\n".join(lines)
