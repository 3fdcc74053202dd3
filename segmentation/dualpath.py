"""DualPathSegNet: a CNN branch for local detail and a Transformer branch for global context, fused at four
resolution levels, for 2D or 3D inputs (``spatial_dims``, as MONAI's networks take it).

CNN branch: a residual U-Net encoder from MONAI ``ResidualUnit`` blocks. Transformer branch: its own strided
convolution pyramid, projected to ``d_model`` tokens at every level; one multi-scale deformable attention layer
lets every token of the three coarser levels attend to a few learned points on all four levels, and the finest
level receives that context upsampled (``attention="window"`` swaps in plain windowed self-attention per level,
for the ablation). Each level's encoder feature receives the Transformer's
(projected back) by addition; a residual decoder with skip connections produces the logits. Either branch can
be dropped (``use_cnn`` / ``use_transformer``) for the ablations.

Size with the defaults (channels 16-32-64-128, d_model 32, 2 input channels, 4 classes): 0.77 M parameters
in 2D and 2.2 M in 3D (``n_parameters``). Peak memory of one forward + backward pass on CPU, measured as the
growth of the process's resident set: 0.25 GB for a 4 x 2 x 96 x 96 batch (2D), 0.94 GB for 1 x 2 x 64^3 (3D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers import Norm
from torch import nn

from meddiffusion.segmentation.deformable import DeformableAttention, WindowAttention, reference_points

ATTENTIONS = ("deformable", "window")


class DualPathSegNet(nn.Module):
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        d_model: int = 32,
        n_heads: int = 4,
        n_points: int = 4,
        attention: str = "deformable",
        use_cnn: bool = True,
        use_transformer: bool = True,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError("DualPathSegNet fuses at four resolution levels: give four channel counts")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}")
        if not (use_cnn or use_transformer):
            raise ValueError("at least one branch is needed")
        self.spatial_dims, self.use_cnn, self.use_transformer, self.attention_kind = (
            spatial_dims,
            use_cnn,
            use_transformer,
            attention,
        )
        norm = Norm.INSTANCE

        def pyramid() -> nn.ModuleList:
            return nn.ModuleList(
                ResidualUnit(spatial_dims, c_in, c_out, strides=1 if i == 0 else 2, subunits=2, norm=norm)
                for i, (c_in, c_out) in enumerate(zip([in_channels, *channels[:-1]], channels, strict=True))
            )

        self.encoder = pyramid() if use_cnn else None
        if use_transformer:
            self.stem = nn.ModuleList(
                Convolution(spatial_dims, c_in, c_out, strides=1 if i == 0 else 2, kernel_size=3, norm=norm)
                for i, (c_in, c_out) in enumerate(zip([in_channels, *channels[:-1]], channels, strict=True))
            )
            self.to_tokens = nn.ModuleList(
                Convolution(spatial_dims, c, d_model, kernel_size=1, conv_only=True) for c in channels
            )
            self.from_tokens = nn.ModuleList(
                Convolution(spatial_dims, d_model, c, kernel_size=1, conv_only=True) for c in channels
            )
            self.norm2 = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
            if attention == "deformable":
                self.norm1 = nn.LayerNorm(d_model)  # windowed attention normalises inside its own block
                self.attention = DeformableAttention(d_model, spatial_dims, n_heads, n_levels=4, n_points=n_points)
            else:
                self.attention = nn.ModuleList(WindowAttention(d_model, spatial_dims, n_heads) for _ in channels[1:])
        self.up = nn.ModuleList(
            Convolution(
                spatial_dims, channels[i + 1], channels[i], strides=2, kernel_size=3, norm=norm, is_transposed=True
            )
            for i in range(3)
        )
        self.decoder = nn.ModuleList(
            ResidualUnit(spatial_dims, 2 * channels[i], channels[i], subunits=2, norm=norm) for i in range(3)
        )
        self.head = Convolution(spatial_dims, channels[0], out_channels, kernel_size=1, conv_only=True)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _transformer(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for conv in self.stem:
            x = conv(x)
            maps.append(x)
        tokens = [proj(m) for proj, m in zip(self.to_tokens, maps, strict=True)]
        # queries live on the three coarser levels (strides 2-8, as Deformable DETR's encoder works on its
        # coarser maps); values come from all four; the finest level receives the context upsampled
        if self.attention_kind == "window":
            attended = []
            for attn, t in zip(self.attention, tokens[1:], strict=True):
                t = t + attn(t)
                flat = t.flatten(2).transpose(1, 2)
                attended.append(t + self.mlp(self.norm2(flat)).transpose(1, 2).reshape(t.shape))
        else:
            shapes = [t.shape[2:] for t in tokens[1:]]
            query = torch.cat([t.flatten(2).transpose(1, 2) for t in tokens[1:]], dim=1)  # [B, sum N_l, d]
            ref = torch.cat([reference_points(tuple(s), x.device) for s in shapes])[None].expand(x.shape[0], -1, -1)
            query = query + self.attention(self.norm1(query), ref, tokens)
            query = query + self.mlp(self.norm2(query))
            attended, start = [], 0
            for s in shapes:
                n = int(torch.tensor(s).prod())
                attended.append(query[:, start : start + n].transpose(1, 2).reshape(x.shape[0], -1, *s))
                start += n
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        finest = tokens[0] + F.interpolate(attended[0], size=tokens[0].shape[2:], mode=mode, align_corners=False)
        tokens = [finest, *attended]
        return [proj(t) for proj, t in zip(self.from_tokens, tokens, strict=True)]

    #: parameter-name prefixes of the decoder; everything else is the encoder (both branches and their fusion),
    #: the part self-supervised pretraining learns and ``seg train --init`` loads
    DECODER_PREFIXES = ("up.", "decoder.", "head.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encode(x)
        h = features[3]
        for i in (2, 1, 0):
            h = self.decoder[i](torch.cat([self.up[i](h), features[i]], dim=1))
        return self.head(h)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The fused features of the four levels (CNN + Transformer), finest first."""
        multiple = 8
        if any(s % multiple for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be a multiple of {multiple}")
        features: list[torch.Tensor | None] = [None] * 4
        if self.encoder is not None:
            h = x
            for i, block in enumerate(self.encoder):
                h = block(h)
                features[i] = h
        if self.use_transformer:
            for i, t in enumerate(self._transformer(x)):
                features[i] = t if features[i] is None else features[i] + t
        return features  # type: ignore[return-value]
