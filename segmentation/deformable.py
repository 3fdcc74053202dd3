"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021) for 2D and 3D feature maps.

Each query attends to ``n_points`` learned sampling locations around its reference point on each of
``n_levels`` feature maps, with learned weights, instead of to every token. Sampling is bilinear/trilinear
through ``torch.nn.functional.grid_sample``. Written here: the reference CUDA kernel (and torchvision's
deform_conv) is not available on this CPU build, and MONAI has no deformable attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeformableAttention(nn.Module):
    """``forward(query [B, N, C], reference [B, N, D] in [0, 1] (x, y[, z]), values: list of [B, C, *S])``."""

    def __init__(self, dim: int, spatial_dims: int, n_heads: int = 4, n_levels: int = 1, n_points: int = 4):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} must be divisible by n_heads {n_heads}")
        self.dim, self.spatial_dims = dim, spatial_dims
        self.n_heads, self.n_levels, self.n_points = n_heads, n_levels, n_points
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * spatial_dims)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset()

    def _reset(self) -> None:
        """Offsets start as a small star of directions around the reference point, as in Deformable DETR."""
        nn.init.zeros_(self.sampling_offsets.weight)
        directions = torch.randn(
            self.n_heads, 1, self.n_points, self.spatial_dims, generator=torch.Generator().manual_seed(0)
        )
        directions = directions / directions.norm(dim=-1, keepdim=True)
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = (directions * scale).expand(-1, self.n_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
        b, n, c = query.shape
        h, lv, p, d = self.n_heads, self.n_levels, self.n_points, self.spatial_dims
        if len(values) != lv:
            raise ValueError(f"expected {lv} feature levels, got {len(values)}")
        offsets = self.sampling_offsets(query).view(b, n, h, lv, p, d)
        weights = self.attention_weights(query).view(b, n, h, lv * p).softmax(-1).view(b, n, h, lv, p)
        w = weights.permute(0, 2, 3, 1, 4)  # [B, H, L, N, P]
        attended = query.new_zeros(b, h, c // h, n)
        for level, value in enumerate(values):
            spatial = value.shape[2:]
            # offsets are in voxels of this level; grid_sample wants (x, y[, z]) = (last, ..., first) axis order
            size = torch.tensor(spatial[::-1], dtype=query.dtype, device=query.device)
            loc = reference[:, :, None, None, :] + offsets[:, :, :, level] / size  # [B, N, H, P, D] in [0, 1]
            v = self.value_proj(value.flatten(2).transpose(1, 2)).transpose(1, 2)  # [B, C, prod(S)]
            v = v.reshape(b * h, c // h, *spatial)
            grid = (2 * loc - 1).permute(0, 2, 1, 3, 4).reshape(b * h, n, p, d)  # [B*H, N, P, D]
            if d == 3:
                grid = grid[:, :, :, None, :]
            out = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            # weighted sum over this level's points, accumulated level by level (no [.., L, P] stack in memory)
            attended = attended + torch.einsum("bhcnp,bhnp->bhcn", out.reshape(b, h, c // h, n, p), w[:, :, level])
        return self.output_proj(attended.permute(0, 3, 1, 2).reshape(b, n, c))


def reference_points(spatial: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """Voxel centers of a grid in [0, 1], ordered (x, y[, z]) = reversed axes, flattened like ``flatten(2)``."""
    axes = [(torch.arange(s, device=device, dtype=torch.float32) + 0.5) / s for s in spatial]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids[::-1], dim=-1).reshape(-1, len(spatial))


class WindowAttention(nn.Module):
    """Plain multi-head self-attention inside non-overlapping windows: the ablation of deformable attention."""

    def __init__(self, dim: int, spatial_dims: int, n_heads: int = 4, window: int = 8):
        super().__init__()
        self.spatial_dims, self.window = spatial_dims, window
        self.attention = nn.MultiheadAttention(dim, n_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is a feature map [B, C, *S]; returns the same shape."""
        b, c, *spatial = x.shape
        w = [min(self.window, s) for s in spatial]
        pad = [(-s) % wi for s, wi in zip(spatial, w, strict=True)]
        padded = F.pad(x, [v for pd in reversed(pad) for v in (0, pd)])
        ps = padded.shape[2:]
        # [B, C, n1, w1, n2, w2, ...] -> [B * windows, prod(w), C]
        shape = [b, c] + [v for s, wi in zip(ps, w, strict=True) for v in (s // wi, wi)]
        t = padded.reshape(shape)
        d = len(spatial)
        perm = [0] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)] + [1]
        tokens = t.permute(perm).reshape(-1, int(torch.tensor(w).prod()), c)
        out, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        inv = [0, 2 * d + 1] + [v for i in range(d) for v in (1 + i, 1 + d + i)]
        out = out.reshape([b] + [s // wi for s, wi in zip(ps, w, strict=True)] + w + [c]).permute(inv)
        out = out.reshape(b, c, *ps)
        return out[(slice(None), slice(None), *[slice(0, s) for s in spatial])]
