"""Interpolation from a low-resolution grid onto the high-resolution grid it was degraded from.

Positions follow ``degradation.index_map`` exactly (not ``F.interpolate``'s half-pixel convention), so an
edge lands on the same voxel before degradation and after upscaling. Used as the bicubic/trilinear baselines
and as the conditioning images of the networks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from meddiffusion.sr.degradation import high_res_positions


def _normalised(positions: np.ndarray, n_low: int) -> torch.Tensor:
    """Low-resolution indices -> grid_sample coordinates (align_corners=True: -1 and 1 are the end voxels)."""
    return torch.as_tensor(2.0 * positions / max(n_low - 1, 1) - 1.0, dtype=torch.float32)


def upsample_planes(planes: torch.Tensor, scale: int, axis: str, mode: str = "bicubic") -> torch.Tensor:
    """Upsample a batch of 2D planes ``[B, C, H, W]`` by ``scale``.

    ``axis="inplane"``: both H and W are degraded (k-space crop). ``axis="through"``: only W is (thick
    slices along the last axis). Values outside the measured range are clamped to the border voxel.
    """
    _, _, h, w = planes.shape
    out_h = h * scale if axis == "inplane" else h
    out_w = w * scale
    ys = _normalised(high_res_positions(out_h, scale, axis), h) if axis == "inplane" else torch.linspace(-1, 1, h)
    xs = _normalised(high_res_positions(out_w, scale, axis), w)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H', W', 2] with (x, y) order
    grid = grid.unsqueeze(0).expand(planes.shape[0], -1, -1, -1).to(planes)
    return F.grid_sample(planes, grid, mode=mode, padding_mode="border", align_corners=True)
