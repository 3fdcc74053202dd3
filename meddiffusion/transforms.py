"""Preprocessing and augmentation: robust intensity normalisation, head masks, and the proposal's presets
built from TorchIO transforms (resampling, foreground crop, gamma, noise, rotation, histogram standardisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from scipy import ndimage
from skimage.filters import threshold_otsu

from meddiffusion.errors import MeddiffError

#: the proposal's target spacing for segmentation training (mm)
PROPOSAL_SPACING = (1.5, 1.5, 5.0)
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


def preprocessing(
    spacing: Sequence[float] | None = PROPOSAL_SPACING,
    crop_foreground: bool = True,
    landmarks: dict | str | Path | None = None,
) -> tio.Compose:
    """Resample to ``spacing`` (labels by nearest neighbour), crop to the head, harmonise, normalise.

    ``landmarks`` are histogram-standardisation landmarks learned with ``learn_landmarks`` on a training set
    (Nyul & Udupa, via TorchIO); they harmonise intensities across scanners before the robust normalisation.
    """
    steps: list[tio.Transform] = []
    if spacing is not None:
        steps.append(tio.Resample(tuple(float(s) for s in spacing)))
    if crop_foreground:
        steps.append(_HeadCrop())
    if landmarks is not None:
        steps.append(harmonisation(landmarks))
    steps.append(tio.RescaleIntensity(out_min_max=(0, 1), percentiles=PERCENTILES, masking_method=_head_mask_tensor))
    return tio.Compose(steps)


def _head_mask_tensor(tensor: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(head_mask(tensor.numpy()))


class _HeadCrop(tio.SpatialTransform):
    """Crop every image of a subject to the bounding box of the first image's head mask (plus a margin)."""

    def __init__(self, margin: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.margin = margin

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        first = subject.get_images(intensity_only=True)[0]
        mask = head_mask(first.data[0].numpy())
        if not mask.any():
            return subject
        coords = np.argwhere(mask)
        lo = np.maximum(coords.min(0) - self.margin, 0)
        hi = np.minimum(coords.max(0) + 1 + self.margin, mask.shape)
        cropping = [int(v) for pair in zip(lo, np.array(mask.shape) - hi, strict=True) for v in pair]
        return tio.Crop(cropping)(subject)


def learn_landmarks(paths: dict[str, Sequence[str | Path]], output: str | Path | None = None) -> dict[str, np.ndarray]:
    """Learn histogram-standardisation landmarks per modality on training images (Nyul & Udupa, via TorchIO),
    inside the head mask. Saved as ``.npz`` (one array per modality) for re-use on new scanners."""
    if not paths or not all(paths.values()):
        raise MeddiffError("no images given to learn intensity landmarks from")
    landmarks = {
        name: tio.HistogramStandardization.train([str(p) for p in files], masking_function=_head_mask_tensor)
        for name, files in paths.items()
    }
    if output is not None:
        np.savez(output, **landmarks)
    return landmarks


def harmonisation(landmarks: dict | str | Path) -> tio.HistogramStandardization:
    """Intensity harmonisation across scanners with landmarks from ``learn_landmarks`` (dict or ``.npz``)."""
    return tio.HistogramStandardization(_load_landmarks(landmarks), masking_method=_head_mask_tensor)


def _load_landmarks(landmarks: dict | str | Path) -> dict:
    if isinstance(landmarks, dict):
        return landmarks
    path = Path(landmarks)
    if not path.is_file():
        raise MeddiffError("landmarks file not found", path)
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
