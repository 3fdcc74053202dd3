"""The conditional diffusion core: network (``network``), noise schedules (``schedule``), sampler (``sampler``).

Kept apart as diffusers keeps models, schedulers and pipelines apart: the network knows nothing of noise
levels beyond the timestep it is given, the schedule knows nothing of MRI, the sampler ties them together.
"""

from meddiffusion.diffusion.network import ConditionalUNet, NetworkConfig, build_diffusion_network
from meddiffusion.diffusion.sampler import sample
from meddiffusion.diffusion.schedule import SAMPLERS, make_scheduler

__all__ = ["SAMPLERS", "ConditionalUNet", "NetworkConfig", "build_diffusion_network", "make_scheduler", "sample"]
