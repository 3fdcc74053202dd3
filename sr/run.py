"""File-level super-resolution: read a volume, upscale or degrade it, write NIfTI outputs with provenance.

These are what ``meddiff sr upscale`` / ``meddiff sr degrade`` and the demo call; they check every output
path before any work starts, so a refused overwrite never leaves a half-written set of files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from meddiffusion.io import check_output, load_image, save_nifti, strip_suffix, write_json
from meddiffusion.provenance import provenance
from meddiffusion.sr.degradation import degrade, low_res_affine
from meddiffusion.sr.pipeline import UpscaleOptions, UpscaleResult, default_slice_axis, upscale


def sidecars(output: str | Path, with_std: bool) -> dict[str, Path]:
    """Every file ``upscale_file`` writes for ``output``: the volume, its provenance, and the uncertainty map."""
    stem = strip_suffix(output)
    paths = {"volume": Path(output), "provenance": stem.with_name(stem.name + ".json")}
    if with_std:
        paths["std"] = stem.with_name(stem.name + "_std.nii.gz")
    return paths


def upscale_file(
    input_path: str | Path, output: str | Path, options: UpscaleOptions, force: bool = False
) -> UpscaleResult:
    """Super-resolve one NIfTI/MetaImage file into ``output`` (+ ``_std`` map when ``samples > 1``)."""
    paths = sidecars(output, options.samples > 1)
    for path in paths.values():
        check_output(path, force)
    image = load_image(input_path)
    result = upscale(image.data[0].numpy(), image.affine, tuple(image.spacing), options)
    save_nifti(result.volume, result.affine, paths["volume"], force=force)
    if result.std is not None:
        save_nifti(result.std, result.affine, paths["std"], force=force)
    write_json(
        provenance(input=str(input_path), output=str(output), options=dataclasses.asdict(options), **_info(result)),
        paths["provenance"],
        force=force,
    )
    return result


def _info(result: UpscaleResult) -> dict:
    return {k: v for k, v in result.info.items() if k in ("slice_axis", "intensity_range", "weights_sha256")}


def degrade_file(
    input_path: str | Path,
    output: str | Path,
    scale: int,
    axis: str,
    slice_axis: int | None = None,
    force: bool = False,
) -> Path:
    """Write the low-resolution version of a volume (k-space crop in-plane, thick slices through-plane)
    with its correct affine; trailing voxels that do not fill a whole low-resolution voxel are cropped."""
    paths = sidecars(output, with_std=False)
    for p in paths.values():
        check_output(p, force)
    image = load_image(input_path)
    volume = image.data[0].numpy()
    slice_axis = default_slice_axis(tuple(image.spacing), axis) if slice_axis is None else slice_axis
    axes = (slice_axis,) if axis == "through" else tuple(a for a in range(3) if a != slice_axis)
    crop = tuple(slice(0, (n // scale) * scale) if a in axes else slice(None) for a, n in enumerate(volume.shape))
    volume = volume[crop]
    positive = volume - min(float(volume.min()), 0.0)
    low = degrade(positive, scale, axis, slice_axis) + min(float(volume.min()), 0.0)
    path = save_nifti(
        low.astype(np.float32), low_res_affine(image.affine, scale, axis, slice_axis), output, force=force
    )
    write_json(
        provenance(input=str(input_path), output=str(output), scale=scale, axis=axis, slice_axis=slice_axis),
        paths["provenance"],
        force=force,
    )
    return path
