"""Training pairs for lesion inpainting, from real tumour MRI with expert labels.

A pair is one axial plane through a tumour: the target is every modality of that plane; the conditioning is
what the sampler will have when it paints a new lesion plane by plane from the bottom up:

* the plane below, complete (at sampling time: already painted),
* this plane and the plane above with the region to paint (the tumour dilated by ``margin`` voxels) blanked,
* the tumour's regions in this plane (whole tumour, core, enhancing) and the blank region itself,

and, as a scalar condition through the network's embedding, log2 of the tumour's volume in mL. In-plane
scale augmentation (0.8-1.25) rescales the volume condition with the apparent lesion size, so the size input
covers a continuous range rather than the few real tumour volumes. Item ``i`` is a pure function of (seed, i).

Modality dropout, so that one model paints whatever subset of its modalities a user has (one FLAIR, say): each
modality of an item is dropped with probability ``modality_dropout`` (one is always kept); a dropped modality,
like one the case lacks (zero-filled when read), is zero in the conditioning and absent from the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from scipy import ndimage
from torch.utils.data import Dataset

from meddiffusion.data.labels import region_masks
from meddiffusion.data.sampling import PatchSampler
from meddiffusion.errors import MeddiffError
from meddiffusion.io import LABEL_KEY, modality_names, voxel_volume_ml

PLANE_AXIS = 2
MARGIN = 3
OUTSIDE_WEIGHT = 0.1
REGION_NAMES = ("WT", "TC", "ET")


def cond_channels(n_modalities: int) -> int:
    """Conditioning channels: 3 planes per modality + 3 tumour regions + the blank mask."""
    return 3 * n_modalities + len(REGION_NAMES) + 1


def regions_stack(label: np.ndarray) -> np.ndarray:
    """BraTS 2021 labels -> float ``[3, ...]`` (WT, TC, ET)."""
    masks = region_masks(label)
    return np.stack([masks[k] for k in REGION_NAMES]).astype(np.float32)


def paint_region(label: np.ndarray, brain: np.ndarray, margin: int = MARGIN) -> np.ndarray:
    """The voxels a lesion repaints: the whole tumour dilated by ``margin`` voxels (so it blends), in the brain."""
    return ndimage.binary_dilation(label > 0, iterations=margin) & brain


def build_cond(
    images: torch.Tensor, regions: torch.Tensor, hole: torch.Tensor, plane: int, window: tuple[slice, slice]
) -> torch.Tensor:
    """The conditioning stack ``[3M + 4, h, w]`` for ``plane`` inside ``window`` (see the module docstring), from
    planes-first volumes: ``images`` [M, Z, X, Y], ``regions`` [3, Z, X, Y], ``hole`` [Z, X, Y]. One definition
    for training and sampling."""
    below, above = max(plane - 1, 0), min(plane + 1, images.shape[1] - 1)
    crop = (slice(None), *window)
    return torch.cat(
        [
            images[:, below][crop],
            images[:, plane][crop] * (1 - hole[plane][window]),
            images[:, above][crop] * (1 - hole[above][window]),
            regions[:, plane][crop],
            hole[plane][window][None],
        ]
    )


class InpaintPairs(Dataset):
    """``target`` [M, P, P], ``cond`` [3M + 4, P, P], ``conditions`` [1] (log2 mL), ``weight`` [1, P, P]."""

    def __init__(
        self,
        subjects: Sequence[tio.Subject],
        patch_size: int = 64,
        seed: int = 0,
        length: int = 10**9,
        scale_range: tuple[float, float] = (0.8, 1.25),
        modality_dropout: float = 0.0,
    ) -> None:
        self.patch_size, self.seed, self.length, self.scale_range = patch_size, seed, length, scale_range
        self.modality_dropout = modality_dropout
        self.items = []
        for subject in subjects:
            if LABEL_KEY not in subject:
                raise MeddiffError(f"case {subject.get('case_id')} has no label map")
            images = torch.stack([subject[m].data[0] for m in modality_names(subject)]).movedim(PLANE_AXIS + 1, 1)
            label = subject[LABEL_KEY].data[0].numpy()
            if not (label > 0).any():
                raise MeddiffError(f"case {subject.get('case_id')} has an empty label map")
            brain = images[0].movedim(0, PLANE_AXIS).numpy() != 0
            hole = torch.from_numpy(paint_region(label, brain)).movedim(PLANE_AXIS, 0).float()
            regions = torch.from_numpy(regions_stack(label)).movedim(PLANE_AXIS + 1, 1)
            volume_ml = float((label > 0).sum() * voxel_volume_ml(subject[LABEL_KEY].spacing))
            size = int(np.ceil(patch_size * scale_range[1]))
            present = images.flatten(1).abs().amax(1) > 0  # a modality the case lacks was zero-filled
            self.items.append((images, regions, hole, volume_ml, PatchSampler(regions[0] > 0, size), present))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        images, regions, hole, volume_ml, sampler, present = self.items[rng.integers(len(self.items))]
        scale = float(np.exp(rng.uniform(*np.log(self.scale_range))))
        window_size = int(round(self.patch_size * scale))
        plane, (rows, cols) = sampler(rng)
        # re-center the sampler's window to this item's size
        cy, cx = (rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2
        h, w = images.shape[2:]
        y0 = int(np.clip(cy - window_size // 2, 0, max(h - window_size, 0)))
        x0 = int(np.clip(cx - window_size // 2, 0, max(w - window_size, 0)))
        window = (slice(y0, y0 + window_size), slice(x0, x0 + window_size))
        cond = build_cond(images, regions, hole, plane, window)
        target = images[:, plane][(slice(None), *window)]
        stacked = torch.cat([target, cond])[None]
        if stacked.shape[-1] != self.patch_size or stacked.shape[-2] != self.patch_size:
            stacked = F.interpolate(stacked, size=(self.patch_size,) * 2, mode="bilinear", align_corners=False)
        stacked = stacked[0]
        m = target.shape[0]
        if rng.random() < 0.5:  # left-right flip: tumours occur on both sides
            stacked = stacked.flip(-1)
        masks = stacked[m:][3 * m :].round()  # regions and hole stay binary after resizing
        cond = torch.cat([stacked[m : 4 * m], masks])
        # the lesion appears 1/scale times as large (in-plane), so its volume condition scales with it
        conditions = torch.tensor([np.log2(volume_ml / scale**3)], dtype=torch.float32)
        weight = OUTSIDE_WEIGHT + (1 - OUTSIDE_WEIGHT) * masks[-1:]  # the painted region counts most
        kept = self._kept(present, rng)
        target = stacked[:m] * kept[:, None, None]
        cond[: 3 * m] *= kept.repeat(3)[:, None, None]  # below, this plane, above: each modality-major
        return {
            "target": target.contiguous(),
            "cond": cond.contiguous(),
            "conditions": conditions,
            "weight": (weight * kept[:, None, None]).contiguous(),  # [M, P, P]: absent modalities count 0
        }

    def _kept(self, present: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """1 for the modalities this item keeps, 0 for those the case lacks or dropout removes (one always kept)."""
        kept = present & torch.from_numpy(rng.random(len(present)) >= self.modality_dropout)
        if not kept.any():
            kept[int(rng.choice(np.flatnonzero(present.numpy())))] = True
        return kept.float()
