"""File-level super-resolution: read a volume, upscale or degrade it, write NIfTI outputs with provenance.

These are what ``meddiff sr upscale`` / ``meddiff sr degrade`` and the demo call; they check every output
path before any work starts, so a refused overwrite never leaves a half-written set of files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torchio as tio

from meddiffusion.io import check_output, load_image, save_image, save_nifti, write_json
from meddiffusion.paths import sidecar
from meddiffusion.provenance import provenance
from meddiffusion.sr.degradation import check_fits, degrade, degraded_axes, low_res_affine
from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions, default_slice_axis

#: what an output's record keeps of the pipeline's info (the options are recorded whole)
RECORDED = ("method", "slice_axis", "intensity_range", "weights", "weights_sha256", "data_consistency_error")


def sidecars(output: str | Path, with_std: bool) -> dict[str, Path]:
    """Every file ``upscale_file`` writes for ``output``: the volume, its provenance, and the uncertainty map
    with its own provenance."""
    paths = {"volume": Path(output), "provenance": sidecar(output)}
    if with_std:
        paths["std"] = sidecar(output, "_std", ".nii.gz")
        paths["std_provenance"] = sidecar(output, "_std")
    return paths


def upscale_file(
    input_path: str | Path, output: str | Path, pipeline: SRPipeline, options: UpscaleOptions, force: bool = False
) -> tio.Subject:
    """Super-resolve one NIfTI/MetaImage file into ``output`` (+ ``_std`` map when ``samples > 1``), each with
    its JSON record."""
    paths = sidecars(output, options.samples > 1)
    for path in paths.values():
        check_output(path, force)
    result = pipeline(tio.Subject(image=load_image(input_path)), **dataclasses.asdict(options))
    save_image(result["image"], paths["volume"], force=force)
    info = {k: v for k, v in result["info"].items() if k in RECORDED}
    record = provenance(input=str(input_path), output=str(output), options=dataclasses.asdict(options), **info)
    if "image_std" in result:
        save_image(result["image_std"], paths["std"], force=force)
        std_record = {**record, "output": str(paths["std"]), "of": str(output)}
        std_record["content"] = f"voxel-wise standard deviation over the {options.samples} samples averaged in OUTPUT"
        write_json(std_record, paths["std_provenance"], force=force)
    write_json(record, paths["provenance"], force=force)
    return result


def degrade_file(
    input_path: str | Path,
    output: str | Path,
    scale: int,
    axis: str,
    slice_axis: int | None = None,
    force: bool = False,
) -> Path:
    """Write the low-resolution version of a volume (k-space crop in-plane, thick slices through-plane) with its
    correct affine. A grid the scale does not divide is refused (``degradation.check_fits``), never cropped."""
    paths = sidecars(output, with_std=False)
    for p in paths.values():
        check_output(p, force)
    image = load_image(input_path)
    volume = image.data[0].numpy()
    slice_axis = default_slice_axis(tuple(image.spacing), axis) if slice_axis is None else slice_axis
    check_fits(volume.shape, scale, degraded_axes(axis, slice_axis), f"{Path(input_path).name}")
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
