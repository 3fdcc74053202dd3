"""Training pairs for super-resolution: real high-resolution volumes, degraded on the fly by ``degradation``.

Every volume is normalised robustly inside the head (percentiles of its low-resolution version, as at
inference), degraded for each task (scale x axis), interpolated back, and cut into 2.5D patches: the
conditioning is the interpolated slice and its neighbours, the target the high-resolution residual.
Item ``i`` of the data set is a pure function of (seed, i), so runs are reproducible and resume exactly.

Volumes blurred along z (thick slices resampled to 1 mm, as many TCGA-derived BraTS volumes are) are poor
through-plane targets: listed as ``inplane_only`` they serve the in-plane tasks alone. To hold tens of volumes in
memory, each is cut to its head's box (plus a margin, so that the degradation's ringing near the edge is kept)
and its planes are stored in half precision (about 1e-3 of the normalised range, far below the errors learned).
Residual diffusion needs the regression's prediction of every plane it trains on: of each whole volume, well over an
hour for sixty volumes on 2 CPU cores. A plane's prediction depends on that plane and its neighbours only, so with
``prior_planes`` it is computed (exactly as at inference) on that many planes per volume, task and plane family,
and patches are drawn from those planes alone. The predictions are kept in a cache folder when one is given, so that
a resumed run reads them back.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from meddiffusion.data.sampling import PatchSampler, pad_to
from meddiffusion.errors import MeddiffError
from meddiffusion.io import load_image
from meddiffusion.sr.degradation import check_fits, degrade, degraded_axes, plane_normals
from meddiffusion.sr.inference import predict_planes
from meddiffusion.sr.planes import Task, interpolate_volume, plane_conditions, to_planes
from meddiffusion.transforms import normalise, robust_range, signal_mask

HEAD_MARGIN = 8  # voxels kept around the head's box


class SRPairs(Dataset):
    """Random 2.5D patches (conditioning, residual target, scalar conditions) from real volumes."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        tasks: Sequence[Task],
        patch_size: int = 48,
        neighbours: int = 1,
        residual_scale: float = 10.0,
        seed: int = 0,
        length: int = 10**9,
        augment: bool = True,
        slice_axis: int = 2,
        prior: tuple[torch.nn.Module, dict] | None = None,
        inplane_only: Sequence[str | Path] = (),
        prior_cache: str | Path | None = None,
        prior_planes: int | None = None,
    ) -> None:
        self.prior = prior
        self.prior_planes = prior_planes
        self.prior_cache = Path(prior_cache) if prior_cache is not None and prior is not None else None
        if self.prior_cache is not None:  # the cache key names the regression model's exact weights
            digest = hashlib.sha256()
            for name, tensor in prior[0].state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().numpy().tobytes())
            self._prior_digest = digest.hexdigest()
        self.patch_size = patch_size
        self.neighbours = neighbours
        self.residual_scale = residual_scale
        self.seed = seed
        self.length = length
        self.augment = augment
        self.entries: list[dict] = []
        # in the order given (a set's order changes between processes, and items must not)
        only = [str(p) for p in inplane_only]
        unique = list(dict.fromkeys([*map(str, paths), *only]))
        # preparing tens of volumes (with a regression prior: its predictions) takes minutes: show it
        for path in tqdm(unique, desc="preparing SR pairs", unit="volume", disable=len(unique) < 4):
            volume = head_box(load_image(path).data[0].numpy())
            for task in tasks:
                if task.axis != "inplane" and path in only:
                    continue
                self.entries.extend(self._prepare(volume, task, slice_axis, path))
        if not self.entries:
            raise ValueError("no (volume, task) pair fits the requested scales")

    def _prepare(self, volume: np.ndarray, task: Task, slice_axis: int, path: str) -> list[dict]:
        axes = degraded_axes(task.axis, slice_axis)
        crop = tuple(
            slice(0, (n // task.scale) * task.scale) if a in axes else slice(None) for a, n in enumerate(volume.shape)
        )
        high = volume[crop]
        high = high - min(float(high.min()), 0.0)  # magnitude images are non-negative (some sets are z-scored)
        try:
            check_fits(high.shape, task.scale, axes)
        except MeddiffError:
            return []  # a volume too small for this task contributes to the others
        if task.axis == "through" and high.shape[slice_axis] < 8 * task.scale:
            return []  # thick-slice volumes (e.g. 26 slices of 5.5 mm) are in-plane training data only
        low = degrade(high, task.scale, task.axis, slice_axis)
        intensity = robust_range(low)
        high_n, low_n = normalise(high, intensity), normalise(low, intensity)
        mask = signal_mask(high)
        normals = plane_normals(task.axis, slice_axis)

        def planes(volume: np.ndarray, normal: int) -> torch.Tensor:
            stored = to_planes(volume, task.axis, slice_axis, normal)
            return torch.from_numpy(np.ascontiguousarray(stored, np.float16 if stored.dtype.kind == "f" else None))

        out = []
        for normal in normals:
            up = torch.from_numpy(
                to_planes(
                    interpolate_volume(low_n, task, slice_axis, normal, "bicubic"), task.axis, slice_axis, normal
                ).copy()
            )
            entry = {"path": path, "task": task, "high": planes(high_n, normal), "up": up.half()}
            mask_planes = planes(mask, normal)
            if self.prior:  # residual diffusion: the regression's prediction of the planes patches come from
                chosen = self._chosen_planes(mask_planes, f"{path}|{task.scale}|{task.axis}|{slice_axis}|{normal}")
                entry["prior"] = torch.zeros_like(entry["up"])
                entry["prior"][chosen] = self._prior_planes(up, chosen, task, slice_axis, normal).half()
                keep = torch.zeros(len(mask_planes), dtype=torch.bool)
                keep[chosen] = True
                mask_planes = mask_planes & keep[:, None, None]
            entry["sampler"] = PatchSampler(mask_planes, self.patch_size)
            out.append(entry)
        return out

    def _chosen_planes(self, mask: torch.Tensor, name: str) -> torch.Tensor:
        """``prior_planes`` of the planes the patch sampler draws from (all with ``None``), by a seeded choice."""
        candidates = PatchSampler(mask, self.patch_size).foreground_planes
        if self.prior_planes is None or self.prior_planes >= len(candidates):
            return torch.from_numpy(candidates)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        return torch.from_numpy(np.sort(rng.choice(candidates, self.prior_planes, replace=False)))

    def _prior_planes(self, up: torch.Tensor, chosen: torch.Tensor, task: Task, slice_axis: int, normal: int):
        """The regression's prediction of planes ``chosen`` (as at inference, from the float32 interpolation):
        computed, or read back from the cache under a key of the model's weights, the task, the planes and the
        interpolated input's own bytes."""
        path = None
        if self.prior_cache is not None:
            key = hashlib.sha256(f"{self._prior_digest}|{task.scale}|{task.axis}|{slice_axis}|{normal}".encode())
            key.update(up.numpy().tobytes())
            key.update(chosen.numpy().astype(np.int64).tobytes())
            path = self.prior_cache / f"{key.hexdigest()[:32]}.npy"
            if path.is_file():
                return torch.from_numpy(np.load(path))
        prediction = predict_planes(*self.prior, up, chosen, task).half()
        if path is not None:
            self.prior_cache.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.stem}.{os.getpid()}.npy")
            np.save(partial, prediction.numpy())
            os.replace(partial, path)  # a stopped run leaves no partial entry
        return prediction

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        entry = self.entries[rng.integers(len(self.entries))]
        plane, window = entry["sampler"](rng)
        stack = plane_conditions(entry["up"], entry.get("prior"), plane, self.neighbours)[0]
        cond = pad_to(stack[(slice(None), *window)].float(), self.patch_size)
        high = pad_to(entry["high"][plane][window][None].float(), self.patch_size)
        if self.augment:
            cond, high = _augment(cond, high, rng, entry["task"])
        # the base the target is a residual over: the regression's prediction (last channel), or the interpolation
        base = cond[-1:] if "prior" in entry else cond[self.neighbours : self.neighbours + 1]
        return {
            "cond": 2.0 * cond - 1.0,
            "target": (high - base) * self.residual_scale,
            "conditions": torch.tensor(entry["task"].conditions(), dtype=torch.float32),
        }


def head_box(volume: np.ndarray, margin: int = HEAD_MARGIN) -> np.ndarray:
    """The volume cut to the box of its non-background voxels plus ``margin`` (never beyond the volume)."""
    foreground = np.argwhere(volume != volume.min())
    if foreground.size == 0:
        return volume
    lo, hi = foreground.min(0) - margin, foreground.max(0) + margin + 1
    return volume[tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, volume.shape, strict=True))]


def _augment(
    cond: torch.Tensor, high: torch.Tensor, rng: np.random.Generator, task: Task
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, and linear contrast changes that commute with the (linear) degradation.

    Inversion (``1 - x``) makes dark-fluid contrasts look like bright-fluid ones (T2), a contrast with few
    training volumes; a random affine intensity change stands in for scanner differences.
    """
    dims = [-1, -2] if task.axis == "inplane" else [-2]
    for d in dims:
        if rng.random() < 0.5:
            cond, high = cond.flip(d), high.flip(d)
    if rng.random() < 0.3:
        cond, high = 1.0 - cond, 1.0 - high
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.1, 0.1)
    return cond * gain + offset, high * gain + offset
