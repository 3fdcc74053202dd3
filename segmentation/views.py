"""Multi-view 2.5D samples for self-supervised pretraining: the three orthogonal planes through one location.

Item ``i`` (a pure function of (seed, i), so runs resume exactly) picks a volume and a location in its brain and
returns the sagittal, coronal and axial 2.5D patches through that voxel (each plane with its neighbours along
its normal, every modality, the segmenter's channel layout) as the global views, and ``n_local`` smaller crops of
random planes around the same voxel as local views. The positives of the DINO objective are these views of one
place seen along different axes. Each view is augmented on its own with MRI-appropriate transforms (gamma, noise,
bias field, a small in-plane affine; no natural-image colour jitter).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset

from meddiffusion.data.sampling import neighbour_stack
from meddiffusion.errors import MeddiffError
from meddiffusion.io import modality_names
from meddiffusion.transforms import seeded_rng


def plane_patch(volume: torch.Tensor, center: Sequence[int], normal: int, size: int, neighbours: int) -> torch.Tensor:
    """The 2.5D patch ``[C * (2n + 1), size, size]`` of the plane normal to ``normal`` through ``center`` of a
    ``[C, X, Y, Z]`` volume: for each channel the plane and its ``n`` neighbours along ``normal``, centred on
    ``center`` in the plane (zero outside the volume)."""
    planes = volume.movedim(normal + 1, 1)  # [C, N, A, B]: planes along ``normal``
    a_axis, b_axis = (axis for axis in range(3) if axis != normal)
    stack = torch.cat([neighbour_stack(c, int(center[normal]), neighbours)[0] for c in planes])  # [C(2n+1), A, B]
    half = size // 2
    out = torch.zeros((stack.shape[0], size, size), dtype=stack.dtype)
    a0, b0 = int(center[a_axis]) - half, int(center[b_axis]) - half
    sa = slice(max(a0, 0), min(a0 + size, stack.shape[1]))
    sb = slice(max(b0, 0), min(b0 + size, stack.shape[2]))
    out[:, sa.start - a0 : sa.stop - a0, sb.start - b0 : sb.stop - b0] = stack[:, sa, sb]
    return out


def view_augmentation() -> tio.Compose:
    """Per-view augmentation of a 2.5D patch stored as ``[C, P, P, 1]``: intensity only and a small in-plane affine."""
    return tio.Compose(
        [
            tio.RandomAffine(scales=0.1, degrees=(0, 0, 0, 0, -10, 10), p=0.5),
            tio.RandomBiasField(coefficients=0.3, order=2, p=0.5),
            tio.RandomGamma(log_gamma=(float(np.log(0.7)), float(np.log(1.4)))),
            tio.RandomNoise(std=(0.0, 0.03)),
        ]
    )


class PlaneViews(Dataset):
    """``views`` ``[3, C', P, P]`` (sagittal, coronal, axial through one voxel) and ``local`` ``[L, C', p, p]``."""

    def __init__(
        self,
        subjects: Sequence[tio.Subject],
        global_size: int = 64,
        local_size: int = 32,
        n_local: int = 4,
        neighbours: int = 1,
        augment: bool = True,
        seed: int = 0,
        length: int = 10**9,
    ) -> None:
        if not subjects:
            raise MeddiffError("no volumes to pretrain on")
        self.volumes = [torch.stack([s[m].data[0] for m in modality_names(s)]) for s in subjects]
        # locations: inside the brain (any modality non-zero), far enough in that the planes hold tissue
        self.brains = [np.argwhere((v != 0).any(0).numpy()) for v in self.volumes]
        if any(b.size == 0 for b in self.brains):
            raise MeddiffError("a pretraining volume is empty (no non-zero voxel)")
        self.global_size, self.local_size, self.n_local = global_size, local_size, n_local
        self.neighbours, self.seed, self.length = neighbours, seed, length
        self.transform = view_augmentation() if augment else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(len(self.volumes)))
        volume, brain = self.volumes[k], self.brains[k]
        center = brain[int(rng.integers(len(brain)))]
        views = [plane_patch(volume, center, normal, self.global_size, self.neighbours) for normal in range(3)]
        local = []
        for _ in range(self.n_local):
            normal = int(rng.integers(3))
            shift = rng.integers(-self.global_size // 4, self.global_size // 4 + 1, size=3)
            shift[normal] = 0  # the same plane family, shifted within it
            local.append(plane_patch(volume, center + shift, normal, self.local_size, self.neighbours))
        if self.transform is not None:
            views = [self._augment(v, int(rng.integers(2**31))) for v in views]
            local = [self._augment(v, int(rng.integers(2**31))) for v in local]
        return {"views": torch.stack(views), "local": torch.stack(local)}

    def _augment(self, patch: torch.Tensor, seed: int) -> torch.Tensor:
        with seeded_rng(seed):
            out = self.transform(tio.ScalarImage(tensor=patch[..., None].float()))
        return out.data[..., 0].float()
