"""The conditional network: a diffusers ``UNet2DModel`` with image conditions as extra input channels and
scalar conditions (scale, slice axis, lesion size, ...) through a learned embedding added to the timestep's.

The same class serves the diffusion model (input = noisy target + condition images) and the deterministic
regression baseline (input = condition images only, timestep fixed at 0), so both share one backbone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers import UNet2DModel
from torch import nn


@dataclass
class NetworkConfig:
    """Architecture as data: saved to ``config.json`` beside the weights and validated on load."""

    target_channels: int = 1
    cond_channels: int = 3
    condition_names: list[str] = field(default_factory=lambda: ["log2_scale", "through_plane"])
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    layers_per_block: int = 1
    norm_num_groups: int = 8
    diffusion: bool = True

    def __post_init__(self) -> None:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("every entry of block_out_channels must be divisible by norm_num_groups")
        if self.cond_channels < 1 or self.target_channels < 1:
            raise ValueError("cond_channels and target_channels must be positive")

    @property
    def downsampling(self) -> int:
        """Spatial sizes must be multiples of this (the UNet halves them len(blocks) - 1 times)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


class ConditionEmbedding(nn.Module):
    """Scalar conditions -> a vector added to the timestep embedding (diffusers' ``identity`` class embed)."""

    def __init__(self, n_conditions: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_conditions, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        return self.mlp(conditions)


class ConditionalUNet(nn.Module):
    """``forward(x_t, t, cond_images, conditions)`` -> prediction with ``target_channels`` channels."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        in_channels = config.cond_channels + (config.target_channels if config.diffusion else 0)
        n_levels = len(config.block_out_channels)
        self.unet = UNet2DModel(
            in_channels=in_channels,
            out_channels=config.target_channels,
            block_out_channels=tuple(config.block_out_channels),
            down_block_types=("DownBlock2D",) * n_levels,
            up_block_types=("UpBlock2D",) * n_levels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            add_attention=False,
            class_embed_type="identity" if config.condition_names else None,
        )
        time_dim = config.block_out_channels[0] * 4
        self.condition_embedding = (
            ConditionEmbedding(len(config.condition_names), time_dim) if config.condition_names else None
        )

    def forward(
        self,
        x_t: torch.Tensor | None,
        timesteps: torch.Tensor,
        cond_images: torch.Tensor,
        conditions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = cond_images if x_t is None else torch.cat([x_t, cond_images], dim=1)
        class_labels = None
        if self.condition_embedding is not None:
            if conditions is None:
                raise ValueError(f"this network needs conditions {self.config.condition_names}")
            class_labels = self.condition_embedding(conditions.to(inputs.dtype))
        return self.unet(inputs, timesteps, class_labels=class_labels).sample

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_diffusion_network(config: dict) -> ConditionalUNet:
    """The network a weights folder's ``config.json`` describes (its ``network`` section); the SR and synthesis
    trainers build their models from the same section they save."""
    return ConditionalUNet(NetworkConfig(**config["network"]))
