"""Noise schedules and samplers, all from diffusers: DDPM for training, DDIM and DPM-Solver++ for few steps."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SAMPLERS = ("ddim", "dpm++", "ddpm")


@dataclass
class ScheduleConfig:
    """The training noise schedule, saved with the weights so that every sampler uses the same one."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"


def make_scheduler(
    name: str = "ddpm",
    num_train_timesteps: int = 1000,
    beta_schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "sample",
) -> SchedulerMixin:
    """One schedule (cosine betas by default) behind every sampler, so a model trains once and samples with any.

    ``prediction_type="sample"``: the network predicts the clean residual directly, which keeps one- and
    few-step sampling close to the posterior mean.
    """
    common = {
        "num_train_timesteps": num_train_timesteps,
        "beta_schedule": beta_schedule,
        "prediction_type": prediction_type,
    }
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=False)
    if name == "ddim":
        # the last step returns the predicted clean sample itself (``set_alpha_to_one``), not one with a trace of noise
        return DDIMScheduler(**common, clip_sample=False, timestep_spacing="trailing", set_alpha_to_one=True)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
