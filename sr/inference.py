"""Running an SR network over whole volumes, plane by plane: shared by the upscale pipeline and by training
pairs that need a regression model's prediction (residual diffusion learns what the regression misses).

The network predicts a residual over a *base*: the interpolated planes, or (residual diffusion) the regression
model's prediction of the same plane family, which then is also a conditioning channel. Planes run in batches
through MONAI's sliding-window inferer, so memory stays bounded for large planes.
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
def predict_planes(
    model: ConditionalUNet,
    config: dict[str, Any],
    interpolated: torch.Tensor,
    index: torch.Tensor,
    task: Task,
    *,
    prior: torch.Tensor | None = None,
    steps: int = 1,
    sampler: str = "ddim",
    generator: torch.Generator | None = None,
    batch_size: int = 8,
    tile: int = 256,
    device: str = "cpu",
) -> torch.Tensor:
    """Planes ``index`` of one plane family at high resolution (normalised): the base (the ``interpolated`` planes,
    or residual diffusion's ``prior`` planes of the same family) plus the network's residual. Each plane depends
    on its own and its neighbours' planes only, so a subset costs only its own planes."""
    scheduler = make_scheduler(sampler, **config["schedule"])
    conditions = torch.tensor([task.conditions()], dtype=torch.float32, device=device)
    multiple = model.config.downsampling
    roi = tuple(min(tile, -(-n // multiple) * multiple) for n in interpolated.shape[1:])

    def predict(window: torch.Tensor) -> torch.Tensor:
        return sample(model, scheduler, window, conditions.expand(window.shape[0], -1), steps, generator)

    index = torch.as_tensor(index).reshape(-1)
    cond = (2.0 * plane_conditions(interpolated, prior, index, config["neighbours"]) - 1.0).float().to(device)
    residual = sliding_window_inference(cond, roi, batch_size, predict, overlap=0.25, mode="gaussian", cval=-1.0)
    base = (interpolated if prior is None else prior)[index].float()
    return base + residual[:, 0].cpu() / config["residual_scale"]


def family_volumes(
    model: ConditionalUNet,
    config: dict[str, Any],
    low: np.ndarray,
    task: Task,
    slice_axis: int,
    normals: list[int],
    *,
    priors: dict[int, np.ndarray] | None = None,
    samples: int = 1,
    steps: int = 1,
    sampler: str = "ddim",
    seed: int = 0,
    batch_size: int = 8,
    tile: int = 256,
    device: str = "cpu",
    progress: bool = False,
) -> list[dict[int, np.ndarray]]:
    """Per sample, the normalised high-resolution volume of each plane family ``normals`` (through-plane SR runs on
    two families); residual diffusion refines each family's regression prediction ``priors[normal]``."""

    def planes_of(volume: np.ndarray, normal: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(to_planes(volume, task.axis, slice_axis, normal)))

    # the conditioning planes are the same for every sample: computed once per plane family
    interpolated = {n: planes_of(interpolate_volume(low, task, slice_axis, n, "bicubic"), n) for n in normals}
    prior_planes = {n: planes_of(priors[n], n) for n in normals} if priors is not None else {}
    volumes = []
    for k in range(samples):
        generator = torch.Generator(device).manual_seed(seed * 1000 + k)
        families = {}
        for normal, planes in interpolated.items():
            result = torch.empty_like(planes)
            batches = torch.arange(planes.shape[0]).split(batch_size)
            label = f"sample {k + 1}/{samples}, planes normal to axis {normal}"
            for idx in tqdm(batches, desc=label, disable=not progress, leave=False):
                result[idx] = predict_planes(
                    model,
                    config,
                    planes,
                    idx,
                    task,
                    prior=prior_planes.get(normal),
                    steps=steps,
                    sampler=sampler,
                    generator=generator,
                    batch_size=batch_size,
                    tile=tile,
                    device=device,
                )
            families[normal] = from_planes(result.numpy(), task.axis, slice_axis, normal)
        volumes.append(families)
    return volumes


def network_volumes(*args: Any, **kwargs: Any) -> list[np.ndarray]:
    """One normalised high-resolution volume per sample: ``family_volumes`` averaged over the plane families."""
    return [np.mean(list(families.values()), axis=0) for families in family_volumes(*args, **kwargs)]
