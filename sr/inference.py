"""Running an SR network over whole volumes, plane by plane: shared by the upscale pipeline and by training
pairs that need a regression model's prediction (residual diffusion learns what the regression misses).

The network predicts a residual over a *base*: the interpolated planes, or (residual diffusion) the regression
model's prediction, which then is also a conditioning channel. Planes run in batches through MONAI's sliding-window
inferer, so memory stays bounded for large planes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

from meddiffusion.diffusion import ConditionalUNet, make_scheduler, sample
from meddiffusion.sr.planes import Task, from_planes, interpolate_volume, plane_conditions, to_planes


@torch.no_grad()
def network_volumes(
    model: ConditionalUNet,
    config: dict[str, Any],
    low: np.ndarray,
    task: Task,
    slice_axis: int,
    normals: list[int],
    *,
    prior: np.ndarray | None = None,
    samples: int = 1,
    steps: int = 1,
    sampler: str = "ddim",
    seed: int = 0,
    batch_size: int = 8,
    tile: int = 256,
    device: str = "cpu",
    progress: bool = False,
) -> list[np.ndarray]:
    """One normalised high-resolution volume per sample: the base (interpolation, or ``prior``) plus the network's
    residual, averaged over the plane families ``normals``."""
    neighbours, residual_scale = config["neighbours"], config["residual_scale"]
    scheduler = make_scheduler(sampler, **config["schedule"])
    multiple = model.config.downsampling
    conditions = torch.tensor([task.conditions()], dtype=torch.float32, device=device)

    def planes_of(volume: np.ndarray, normal: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(to_planes(volume, task.axis, slice_axis, normal)))

    # the conditioning planes are the same for every sample: computed once per plane family
    interpolated = {n: planes_of(interpolate_volume(low, task, slice_axis, n, "bicubic"), n) for n in normals}
    priors = {n: planes_of(prior, n) for n in normals} if prior is not None else {}
    volumes = []
    for k in range(samples):
        generator = torch.Generator(device).manual_seed(seed * 1000 + k)
        per_normal = []
        for normal, planes in interpolated.items():
            base = priors.get(normal, planes)
            h, w = planes.shape[1:]
            roi = tuple(min(tile, -(-n // multiple) * multiple) for n in (h, w))

            def predict(window: torch.Tensor, generator=generator) -> torch.Tensor:
                return sample(model, scheduler, window, conditions.expand(window.shape[0], -1), steps, generator)

            result = torch.empty_like(planes)
            batches = torch.arange(planes.shape[0]).split(batch_size)
            label = f"sample {k + 1}/{samples}, planes normal to axis {normal}"
            for idx in tqdm(batches, desc=label, disable=not progress, leave=False):
                cond = (2.0 * plane_conditions(planes, priors.get(normal), idx, neighbours) - 1.0).to(device)
                residual = sliding_window_inference(
                    cond, roi, batch_size, predict, overlap=0.25, mode="gaussian", cval=-1.0
                )
                result[idx] = base[idx] + residual[:, 0].cpu() / residual_scale
            per_normal.append(from_planes(result.numpy(), task.axis, slice_axis, normal))
        volumes.append(np.mean(per_normal, axis=0))
    return volumes
