"""2D / 2.5D slice and patch sampling along any axis, weighted towards the foreground.

Models here work on planes: a volume is viewed as a stack of planes normal to one axis, a training item is a
patch of one plane plus, for 2.5D, the same patch of its neighbours as extra channels. Item ``i`` is a pure
function of (seed, i), so training is reproducible and resumes exactly.
"""

from __future__ import annotations

import numpy as np
import torch


def neighbour_stack(planes: torch.Tensor, index: torch.Tensor | int, neighbours: int) -> torch.Tensor:
    """Planes ``index - n .. index + n`` of ``[N, H, W]`` (clamped at the ends) as channels: ``[B, 2n+1, H, W]``."""
    index = torch.as_tensor(index).reshape(-1)
    offsets = torch.arange(-neighbours, neighbours + 1)
    rows = (index[:, None] + offsets[None, :]).clamp(0, planes.shape[0] - 1)
    return planes[rows]


class PatchSampler:
    """Chooses (plane, window) pairs: with probability ``foreground_p`` the patch is centered on a random
    foreground voxel (planes with little foreground are skipped), otherwise anywhere in a random plane."""

    def __init__(self, mask: torch.Tensor, patch_size: int, foreground_p: float = 1.0, min_fraction: float = 0.05):
        self.mask = mask.bool()
        self.patch_size = patch_size
        self.foreground_p = foreground_p
        fraction = self.mask.flatten(1).float().mean(1)
        self.foreground_planes = np.flatnonzero((fraction > min_fraction).numpy())
        if self.foreground_planes.size == 0:
            self.foreground_planes = np.flatnonzero((fraction > 0).numpy())

    def __call__(self, rng: np.random.Generator) -> tuple[int, tuple[slice, slice]]:
        n, h, w = self.mask.shape
        p = self.patch_size
        # (foreground_p = 1 draws no coin, so a run's sample stream does not depend on this option existing)
        if self.foreground_planes.size and (self.foreground_p >= 1 or rng.random() < self.foreground_p):
            plane = int(rng.choice(self.foreground_planes))
            voxels = torch.nonzero(self.mask[plane])
            cy, cx = voxels[rng.integers(len(voxels))].tolist()
        else:
            plane, cy, cx = int(rng.integers(n)), int(rng.integers(h)), int(rng.integers(w))
        y0 = int(np.clip(cy - p // 2, 0, max(h - p, 0)))
        x0 = int(np.clip(cx - p // 2, 0, max(w - p, 0)))
        return plane, (slice(y0, y0 + p), slice(x0, x0 + p))


def pad_to(x: torch.Tensor, size: int, mode: str = "replicate") -> torch.Tensor:
    """Pad the last two dimensions up to ``size`` (patches from planes smaller than the patch)."""
    ph, pw = max(size - x.shape[-2], 0), max(size - x.shape[-1], 0)
    if not ph and not pw:
        return x
    if mode == "constant":
        return torch.nn.functional.pad(x, (0, pw, 0, ph))
    return torch.nn.functional.pad(x[None].float(), (0, pw, 0, ph), mode=mode)[0].to(x.dtype)
