"""Volumes as stacks of planes, the unit the 2.5D SR networks work on: the tasks (scale x axis), the plane layouts
of in-plane and through-plane SR, interpolation onto the high-resolution grid, and the conditioning channels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from meddiffusion.data.sampling import neighbour_stack
from meddiffusion.sr.interpolation import upsample_planes


@dataclass(frozen=True)
class Task:
    """One degradation the model learns: ``scale`` along ``axis`` (in-plane k-space crop or thick slices)."""

    scale: int
    axis: str

    def conditions(self) -> list[float]:
        """The scalar conditions the network receives: log2(scale) and whether it is through-plane."""
        return [float(np.log2(self.scale)), 1.0 if self.axis == "through" else 0.0]


def to_planes(volume: np.ndarray, axis: str, slice_axis: int, plane_normal: int) -> np.ndarray:
    """Rearrange a volume into a stack of 2D planes ``[N, H, W]`` the network works on.

    In-plane: planes are slices normal to ``slice_axis``. Through-plane: planes contain ``slice_axis``,
    which is put last (W), and ``plane_normal`` is the other in-plane axis they are stacked along.
    """
    if axis == "inplane":
        return np.moveaxis(volume, slice_axis, 0)
    rest = next(a for a in range(3) if a not in (plane_normal, slice_axis))
    return np.transpose(volume, (plane_normal, rest, slice_axis))


def from_planes(planes: np.ndarray, axis: str, slice_axis: int, plane_normal: int) -> np.ndarray:
    """Inverse of ``to_planes``."""
    if axis == "inplane":
        return np.moveaxis(planes, 0, slice_axis)
    rest = next(a for a in range(3) if a not in (plane_normal, slice_axis))
    order = (plane_normal, rest, slice_axis)
    return np.transpose(planes, np.argsort(order))


def interpolate_volume(low: np.ndarray, task: Task, slice_axis: int, plane_normal: int, mode: str) -> np.ndarray:
    """Interpolate a degraded volume onto its high-resolution grid (planes in, planes out)."""
    planes = torch.from_numpy(np.ascontiguousarray(to_planes(low, task.axis, slice_axis, plane_normal)))
    up = torch.cat([upsample_planes(chunk[:, None], task.scale, task.axis, mode)[:, 0] for chunk in planes.split(64)])
    return from_planes(up.numpy(), task.axis, slice_axis, plane_normal)


def plane_conditions(interpolated: torch.Tensor, prior: torch.Tensor | None, index, neighbours: int) -> torch.Tensor:
    """The conditioning channels of planes ``index`` (intensities in [0, 1]): the interpolated plane and its
    neighbours, then (residual diffusion) the regression model's prediction of the plane."""
    cond = neighbour_stack(interpolated, index, neighbours)
    if prior is not None:
        cond = torch.cat([cond, prior[torch.as_tensor(index).reshape(-1)][:, None]], dim=1)
    return cond
