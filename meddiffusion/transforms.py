"""Intensity normalisation, head and brain masks, and the proposal's augmentation (TorchIO: gamma, noise, rotation).

The one preprocessing path of the models is ``data.prepare`` (brain normalisation, optional resampling to a
working spacing), built from these pieces.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torchio as tio
from scipy import ndimage
from skimage.filters import threshold_otsu

PERCENTILES = (0.5, 99.5)


def _background_and_signal(volume: np.ndarray) -> tuple[float, np.ndarray]:
    """Background = the most common value (0 for scanner images, a negative constant for images normalised
    to zero mean inside the brain); signal = the other voxels."""
    values, counts = np.unique(volume[:: max(1, volume.size // 200_000)], return_counts=True)
    background = values[np.argmax(counts)]
    return float(background), volume[volume != background]


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (np.argmax(sizes) + 1)
    return ndimage.binary_fill_holes(mask)


def head_mask(volume: np.ndarray) -> np.ndarray:
    """The head (or brain, for skull-stripped data): voxels above 10 % of the signal's 99th percentile over
    the background, largest component, holes filled. Evaluation and cropping use it."""
    background, signal = _background_and_signal(volume)
    if signal.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    threshold = background + 0.1 * (np.percentile(signal, 99) - background)
    return _largest_filled(volume > threshold)


def brain_mask(volume: np.ndarray) -> np.ndarray:
    """The brain of a skull-stripped image (BraTS-style): every voxel that differs from the background value,
    largest component, holes filled. Segmentation normalises inside it; lesions are placed inside it."""
    background, _ = _background_and_signal(volume)
    return _largest_filled(volume != background)


def signal_mask(volume: np.ndarray) -> np.ndarray:
    """The bright tissue the intensity normalisation is anchored on: Otsu threshold of the non-background
    voxels (capped at their 40th percentile), largest component, holes filled. The shipped super-resolution
    weights were trained with intensities normalised on this mask, so it stays as it is."""
    background, signal = _background_and_signal(volume)
    if signal.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    try:
        threshold = threshold_otsu(signal)
    except ValueError:  # a single distinct value
        threshold = background
    return _largest_filled(volume > min(threshold, np.percentile(signal, 40)))


def robust_range(volume: np.ndarray, mask: np.ndarray | None = None, percentiles=PERCENTILES) -> tuple[float, float]:
    """Low and high intensity percentiles inside ``mask`` (``signal_mask`` by default); never zero-width."""
    mask = signal_mask(volume) if mask is None else mask
    values = volume[mask] if mask.any() else volume.ravel()
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return lo, hi


def normalise(volume: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    """Map ``[lo, hi]`` to ``[0, 1]`` (values outside are kept, not clipped, so the map is invertible)."""
    lo, hi = intensity_range
    return ((volume - lo) / (hi - lo)).astype(np.float32)


def denormalise(volume: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    lo, hi = intensity_range
    return (volume * (hi - lo) + lo).astype(np.float32)


def augmentation(
    gamma: tuple[float, float] = (0.8, 1.2),
    noise_std: float = 0.01,
    rotation_deg: float = 15.0,
    rotation_p: float = 0.5,
    rotation_axis: int | None = None,
) -> tio.Compose:
    """The proposal's augmentation: contrast gamma 0.8-1.2, Gaussian noise sigma <= 0.01, rotation +-15 deg (p=0.5).

    Applied to subjects whose intensities are already normalised to about [0, 1] (noise is in those units).
    TorchIO's ``RandomGamma`` takes log-gamma, hence the logarithms. ``rotation_axis``: rotate about that axis
    only (in-plane rotation of patches one plane thick); about all three when None.
    """
    degrees: float | tuple[float, ...] = rotation_deg
    if rotation_axis is not None:
        degrees = tuple(v if axis == rotation_axis else 0.0 for axis in range(3) for v in (-rotation_deg, rotation_deg))
    return tio.Compose(
        [
            tio.RandomAffine(scales=0, degrees=degrees, p=rotation_p, image_interpolation="linear"),
            tio.RandomGamma(log_gamma=(float(np.log(gamma[0])), float(np.log(gamma[1])))),
            tio.RandomNoise(std=(0.0, noise_std)),
        ]
    )


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with torch's global generators seeded, then restore them: TorchIO's random transforms draw from
    torch's CPU generator, and a data item must be a pure function of its index (exact resume, any worker count).

    In a DataLoader worker, the CPU generator only: a worker forked from a process that trains on the GPU cannot
    touch CUDA ("Cannot re-initialize CUDA in forked subprocess"; found on a lent H200 with train.num_workers 2),
    and ``fork_rng`` would read every GPU's generator. torch's own seeding skips CUDA in such a worker."""
    in_worker = torch.utils.data.get_worker_info() is not None
    with torch.random.fork_rng(devices=[] if in_worker else None):
        torch.manual_seed(seed)
        yield
