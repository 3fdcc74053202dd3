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
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one sample per batch item; a fixed ``generator`` seed makes it reproducible.

    For a regression network (``config.diffusion`` false) this is one forward pass at timestep 0.
    Inpainting (RePaint-style, Lugmayr et al. 2022): where ``known_mask`` is 1, ``known`` (noised to the
    current step's level) replaces the sample after every step, and exactly ``known`` at the end.
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
        if known is not None:
            previous = _previous_timestep(scheduler, t)
            if previous >= 0:
                noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else "cpu")
                noise = noise.to(x)
                level = torch.full((batch,), previous, dtype=torch.long, device=device)
                x = torch.where(known_mask.bool(), scheduler.add_noise(known, noise, level), x)
    if known is not None:
        x = torch.where(known_mask.bool(), known, x)
    return x


def _previous_timestep(scheduler: SchedulerMixin, t: torch.Tensor) -> int:
    """The timestep the sampler moved to from ``t`` (-1 after the last one)."""
    timesteps = scheduler.timesteps.tolist()
    index = timesteps.index(int(t))
    return int(timesteps[index + 1]) if index + 1 < len(timesteps) else -1
