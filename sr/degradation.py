"""How low-resolution MRI is made from high-resolution MRI, and the geometry that goes with it.

In-plane (``--axis inplane``): the scanner measures only the central k-space, so the low-resolution image is
the magnitude of the inverse DFT of the central ``N/s`` coefficients on both in-plane axes, divided by ``s``
per axis so intensities keep their scale. A DFT crop keeps sample 0 and the field of view: low-resolution
voxel ``j`` sits where high-resolution voxel ``j*s`` sits, and the low-resolution affine is the
high-resolution one with spacing x s and the same origin.

Through-plane (``--axis through``): a thick slice is the mean of ``s`` consecutive thin slices, centered at the
mean of their centers: low-resolution slice ``i`` sits at high-resolution index ``s*i + (s-1)/2``.

The k-space crop and its data-consistency projection are written here by hand: no maintained library exposes
an MRI Fourier-crop degradation with this geometry.
"""

from __future__ import annotations

import numpy as np
from scipy import fft

from meddiffusion.errors import MeddiffError

AXES = ("inplane", "through")


def inplane_axes(slice_axis: int) -> tuple[int, int]:
    """The two axes that span a slice whose normal is ``slice_axis``."""
    return tuple(a for a in range(3) if a != slice_axis)  # type: ignore[return-value]


def degraded_axes(axis: str, slice_axis: int) -> tuple[int, ...]:
    """The axes a task's degradation acts on: both in-plane axes, or the slice axis through-plane."""
    return inplane_axes(slice_axis) if axis == "inplane" else (slice_axis,)


def plane_normals(axis: str, slice_axis: int) -> list[int]:
    """The plane families a 2.5D model runs on: the slices themselves in-plane; through-plane, the two families
    of planes that contain the thick axis."""
    return [slice_axis] if axis == "inplane" else list(inplane_axes(slice_axis))


def check_fits(
    shape: tuple[int, ...], scale: int, axes: tuple[int, ...], name: str = "image", min_low: int = 2
) -> None:
    """Raise unless every axis in ``axes`` is a multiple of ``scale`` with at least ``min_low`` samples left: the
    one fit check for a scale (degrading a high-resolution grid, and the grid an upscale produces; bicubic
    interpolation needs 4 low-resolution samples). Never crops: a grid the scale does not divide would not map
    back onto the original, so the user decides how to crop or pad."""
    if scale < 2:
        raise MeddiffError(f"--scale must be an integer of 2 or more, got {scale}")
    for a in axes:
        if shape[a] % scale or shape[a] // scale < min_low:
            raise MeddiffError(
                f"scale {scale} does not fit {name} of shape {tuple(shape)}: axis {a} ({shape[a]} voxels) "
                f"must be a multiple of {scale} with at least {min_low * scale} voxels (crop or pad it first)"
            )


def _central_freqs(n_low: int) -> np.ndarray:
    """DFT frequencies kept by a crop to ``n_low`` samples (-n_low//2 .. n_low - n_low//2 - 1), in the
    natural FFT order of an ``n_low``-point spectrum, so the cropped array is itself a valid spectrum."""
    return np.fft.fftfreq(n_low, d=1.0 / n_low).round().astype(int)


def _crop_index(shape: tuple[int, ...], axes: tuple[int, ...], low: tuple[int, ...]) -> tuple:
    """Open-mesh index of the kept frequencies inside a full spectrum."""
    idx: list = [slice(None)] * len(shape)
    grids = np.ix_(*[_central_freqs(m) % shape[a] for a, m in zip(axes, low, strict=True)])
    for a, g in zip(axes, grids, strict=True):
        idx[a] = g
    return tuple(idx)


def kspace_downsample(volume: np.ndarray, scale: int, axes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Fourier-crop ``volume`` by ``scale`` on ``axes`` and return the magnitude image."""
    check_fits(volume.shape, scale, axes)
    low = tuple(volume.shape[a] // scale for a in axes)
    spectrum = fft.fftn(volume.astype(np.float64), axes=axes, workers=-1)
    cropped = spectrum[_crop_index(volume.shape, axes, low)]
    out = fft.ifftn(cropped, axes=axes, workers=-1) / scale ** len(axes)
    return np.abs(out).astype(np.float32)


def thick_slice_downsample(volume: np.ndarray, scale: int, axis: int = 2) -> np.ndarray:
    """Average ``scale`` consecutive slices along ``axis`` (trailing slices that do not fill one are an error)."""
    check_fits(volume.shape, scale, (axis,))
    moved = np.moveaxis(volume.astype(np.float64), axis, -1)
    thick = moved.reshape(*moved.shape[:-1], moved.shape[-1] // scale, scale).mean(-1)
    return np.moveaxis(thick, -1, axis).astype(np.float32)


def degrade(volume: np.ndarray, scale: int, axis: str, slice_axis: int = 2) -> np.ndarray:
    """The degradation ``--scale``/``--axis`` mean: k-space crop in-plane, or thick slices through-plane."""
    if axis == "inplane":
        return kspace_downsample(volume, scale, inplane_axes(slice_axis))
    if axis == "through":
        return thick_slice_downsample(volume, scale, slice_axis)
    raise MeddiffError(f"axis must be one of {AXES}, got {axis!r}")


def index_map(scale: int, axis: str) -> tuple[float, float]:
    """(a, b) such that low-resolution index i sits at high-resolution index a*i + b on a degraded axis."""
    return (float(scale), 0.0) if axis == "inplane" else (float(scale), (scale - 1) / 2.0)


def low_res_affine(affine: np.ndarray, scale: int, axis: str, slice_axis: int = 2) -> np.ndarray:
    """Affine of the degraded volume: high-res affine composed with the index map on degraded axes."""
    a, b = index_map(scale, axis)
    axes = degraded_axes(axis, slice_axis)
    index = np.eye(4)
    for ax in axes:
        index[ax, ax] = a
        index[ax, 3] = b
    return np.asarray(affine, dtype=np.float64) @ index


def high_res_affine(affine: np.ndarray, scale: int, axis: str, slice_axis: int = 2) -> np.ndarray:
    """Inverse of ``low_res_affine``: the grid an upscaled volume lives on (same world extent)."""
    unit = low_res_affine(np.eye(4), scale, axis, slice_axis)
    return np.asarray(affine, dtype=np.float64) @ np.linalg.inv(unit)


def high_res_positions(n_high: int, scale: int, axis: str) -> np.ndarray:
    """Low-resolution (fractional) index of each high-resolution sample along a degraded axis."""
    a, b = index_map(scale, axis)
    return (np.arange(n_high) - b) / a


def data_consistency(
    output: np.ndarray, measured: np.ndarray, scale: int, axis: str, slice_axis: int = 2
) -> np.ndarray:
    """Project ``output`` so that degrading it gives back ``measured`` (to float precision).

    In-plane: the kept k-space of the output is replaced by the measured one (and its Hermitian mirror, so
    the result stays real); for non-negative ``measured`` then ``kspace_downsample(result) == measured``.
    Through-plane: each group of ``scale`` thin slices is shifted so that its mean equals the thick slice.
    """
    return _projector(measured, output.shape, scale, axis, slice_axis)(output)


def _projector(measured: np.ndarray, shape: tuple[int, ...], scale: int, axis: str, slice_axis: int):
    """``data_consistency`` onto ``measured`` as a function of the output, the measured spectrum computed once
    (alternating projections apply it many times). SciPy's FFT on all cores: NumPy's takes ~10x longer on the
    inner axes of a volume."""
    if axis == "through":
        target = np.moveaxis(measured.astype(np.float64), slice_axis, -1)[..., None]

        def through(output: np.ndarray) -> np.ndarray:
            moved = np.moveaxis(output.astype(np.float64), slice_axis, -1)
            groups = moved.reshape(*moved.shape[:-1], -1, scale)
            fixed = groups + (target - groups.mean(-1, keepdims=True))
            return np.moveaxis(fixed.reshape(moved.shape), -1, slice_axis).astype(np.float32)

        return through
    axes = inplane_axes(slice_axis)
    low = tuple(shape[a] // scale for a in axes)
    measured_spectrum = fft.fftn(measured.astype(np.float64), axes=axes, workers=-1) * scale ** len(axes)
    kept = _crop_index(shape, axes, low)
    mirror_idx: list = [slice(None)] * len(shape)
    grids = np.ix_(*[(-_central_freqs(m)) % shape[a] for a, m in zip(axes, low, strict=True)])
    for a, g in zip(axes, grids, strict=True):
        mirror_idx[a] = g
    mirror, mirrored = tuple(mirror_idx), np.conj(measured_spectrum)

    def inplane(output: np.ndarray) -> np.ndarray:
        spectrum = fft.fftn(output.astype(np.float64), axes=axes, workers=-1)
        spectrum[mirror] = mirrored
        spectrum[kept] = measured_spectrum
        return np.real(fft.ifftn(spectrum, axes=axes, workers=-1)).astype(np.float32)

    return inplane


def physical_consistency(
    output: np.ndarray, measured: np.ndarray, scale: int, axis: str, slice_axis: int = 2, iterations: int = 30
) -> tuple[np.ndarray, float]:
    """``output`` made consistent with the measurement *and* physical: alternating projections (POCS) onto the two
    convex sets every true image lies in, {degrading it gives ``measured``} (``data_consistency``) and {no value
    below the measurement's floor} (a magnitude image is not negative; a z-scored one not below its background).
    The plain projection rings in k-space and puts negative values around the head; ending on the floor makes
    the output physical exactly, and the returned data-consistency error (max |degrade(output) - measured| over
    the measured range) says how far from exact the projection left it (it shrinks with ``iterations``)."""
    floor = float(measured.min())
    project = _projector(measured, output.shape, scale, axis, slice_axis)
    result = output.astype(np.float32)
    for _ in range(iterations):
        result = np.maximum(project(result), floor)
    error = np.abs(degrade(result - floor, scale, axis, slice_axis) + floor - measured).max()
    return result, float(error / max(float(measured.max()) - floor, 1e-12))
