"""The diffusion training objective, shared by every conditional diffusion model of the package."""

from __future__ import annotations

import torch


def diffusion_loss(scheduler):
    """DDPM objective: noise the clean target at a random timestep, predict it back (MSE; the network predicts
    the clean sample, ``prediction_type="sample"``). A batch ``weight`` map weights the squared error per
    pixel (inpainting: the region to paint counts most)."""

    def loss_fn(model, batch, generator):
        x0 = batch["target"]
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0)
        t = torch.randint(
            0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=generator.device
        ).to(x0.device)
        x_t = scheduler.add_noise(x0, noise, t)
        prediction = model(x_t, t, batch["cond"], batch["conditions"])
        error = (prediction.float() - x0.float()) ** 2
        if "weight" in batch:
            weight = batch["weight"].float().expand_as(error)
            return (error * weight).sum() / weight.sum()
        return error.mean()

    return loss_fn
