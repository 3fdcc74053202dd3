"""The sampling loop: start from noise, denoise with the network under a diffusers scheduler."""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from meddiffusion.diffusion.network import ConditionalUNet


@torch.no_grad()
def sample(
    model: ConditionalUNet,
    scheduler: SchedulerMixin,
    cond_images: torch.Tensor,
    conditions: torch.Tensor | None,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one sample per batch item; a fixed ``generator`` seed makes it reproducible.

    For a regression network (``config.diffusion`` false) this is one forward pass at timestep 0.
    """
    batch = cond_images.shape[0]
    device = cond_images.device
    if not model.config.diffusion:
        t0 = torch.zeros(batch, dtype=torch.long, device=device)
        return model(None, t0, cond_images, conditions)
    shape = (batch, model.config.target_channels, *cond_images.shape[2:])
    x = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu")
    x = x.to(device=device, dtype=cond_images.dtype) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps, device=device)
    for t in scheduler.timesteps:
        timestep = torch.full((batch,), int(t), dtype=torch.long, device=device)
        prediction = model(scheduler.scale_model_input(x, t), timestep, cond_images, conditions)
        x = scheduler.step(prediction, t, x, generator=generator).prev_sample
    return x
