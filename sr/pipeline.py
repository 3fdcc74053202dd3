"""Super-resolution of whole volumes: the ``meddiff sr upscale`` pipeline.

2.5D: each plane is conditioned on its interpolated self and its neighbours; through-plane, the model runs on
the two orthogonal families of planes that contain the thick axis and their results are averaged. Planes run
in batches through MONAI's sliding-window inferer, so memory stays bounded for large planes. Intensities are
normalised robustly inside the head and mapped back to the input's scale; the output affine comes from
``degradation.high_res_affine``, so it says where every output voxel is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio
from tqdm.auto import tqdm

from meddiffusion.diffusion import ConditionalUNet, build_diffusion_network
from meddiffusion.errors import MeddiffError
from meddiffusion.paths import weights_folder
from meddiffusion.sr import DEFAULT_METHOD, METHODS
from meddiffusion.sr.degradation import (
    AXES,
    check_fits,
    degraded_axes,
    high_res_affine,
    physical_consistency,
    plane_normals,
)
from meddiffusion.sr.inference import family_volumes, network_volumes
from meddiffusion.sr.planes import Task, interpolate_volume
from meddiffusion.transforms import denormalise, normalise, robust_range
from meddiffusion.weights import check_device, load_weights, weights_hash

#: shipped weights folder used by each learned method when ``--weights`` is not given
SHIPPED = {"diffusion": "sr-diffusion", "unet": "sr-unet"}


@dataclass
class UpscaleOptions:
    """How to upscale (per call); which model is the pipeline's (``SRPipeline.from_pretrained``)."""

    scale: int = 2
    axis: str = "inplane"
    steps: int = 1  # diffusion: best of 1, 4, 10 for the shipped weights on validation volumes (docs/benchmarks.md)
    samples: int = 1
    sampler: str = "ddim"
    data_consistency: bool = True
    slice_axis: int | None = None
    seed: int = 0
    batch_size: int = 8
    tile: int = 256
    progress: bool = True

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise MeddiffError(f"--axis must be one of {', '.join(AXES)}, got {self.axis!r}")
        if self.scale < 2:
            raise MeddiffError(f"--scale must be 2 or more, got {self.scale}")
        if self.steps < 1 or self.samples < 1:
            raise MeddiffError("--steps and --samples must be at least 1")
        if self.batch_size < 1:
            raise MeddiffError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class UpscaleResult:
    volume: np.ndarray
    affine: np.ndarray
    std: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)


def default_slice_axis(spacing: tuple[float, ...], axis: str) -> int:
    """Where slices are stacked: through-plane, the axis with the largest voxel size (axis 2 on ties);
    in-plane, axis 2, the slice axis of how scanners store 2D acquisitions."""
    spacing = tuple(float(s) for s in spacing)
    if axis == "inplane" or np.allclose(spacing, spacing[0], rtol=0.02):
        return 2
    return int(np.argmax(spacing))


def normalised_input(volume: np.ndarray) -> tuple[np.ndarray, tuple[float, float], float]:
    """What the networks see of an input volume: shifted to be non-negative (some sets are z-scored), then
    normalised robustly inside the head; with the intensity range and the shift that map it back."""
    shift = min(float(volume.min()), 0.0)
    positive = volume.astype(np.float32) - shift
    intensity = robust_range(positive)
    return normalise(positive, intensity), intensity, shift


class SRPipeline:
    """Super-resolution of whole volumes, as a diffusers pipeline: load once, call on data.

    ``SRPipeline.from_pretrained("sr-diffusion")(subject, scale=4)`` returns a TorchIO ``Subject`` whose images
    are the upscaled ones on the high-resolution grid (their affines say where every voxel is), with ``NAME_std``
    maps when ``samples > 1`` and label maps resampled onto the new grid (nearest neighbour).
    ``SRPipeline.interpolation()`` is the bicubic / linear baseline through the same code path.
    """

    def __init__(
        self,
        method: str,
        model: ConditionalUNet | None = None,
        config: dict[str, Any] | None = None,
        folder: Path | None = None,
        device: str = "cpu",
    ) -> None:
        if method not in METHODS:
            raise MeddiffError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method, self.model, self.config, self.folder, self.device = method, model, config or {}, folder, device
        self.hash = weights_hash(folder) if folder is not None else None
        # residual diffusion: the regression model whose prediction the diffusion model refines, kept in the
        # weights folder's ``prior/`` (so the folder alone reproduces the method)
        prior = self.config.get("prior")
        self.prior = SRPipeline.from_pretrained(folder / prior, device) if prior and folder is not None else None

    @classmethod
    def from_pretrained(cls, name_or_folder: str | Path, device: str = "cpu") -> SRPipeline:
        """A shipped weights name (``sr-diffusion``, ``sr-unet``) or a weights folder written by ``sr train``."""
        folder = weights_folder(name_or_folder)
        model, config = load_weights(folder, "sr", build_diffusion_network, check_device(device))
        return cls(config["method"], model, config, folder, device)

    @classmethod
    def interpolation(cls) -> SRPipeline:
        return cls("bicubic")

    @classmethod
    def for_method(cls, method: str | None, weights: str | Path | None = None, device: str = "cpu") -> SRPipeline:
        """The command line's choice: ``--method`` with its shipped weights, or ``--weights`` of that method; with no
        method, the weights' own, else the default method."""
        check_device(device)
        if method is None and weights is not None:
            return cls.from_pretrained(weights, device)
        method = method or DEFAULT_METHOD
        if method == "bicubic":
            return cls.interpolation()
        pipeline = cls.from_pretrained(weights or SHIPPED.get(method, method), device)
        if pipeline.method != method:
            raise MeddiffError(f"these weights are for method {pipeline.method!r}, not {method!r}", pipeline.folder)
        return pipeline

    def __call__(self, data: tio.Subject | tio.ScalarImage, **options: Any) -> tio.Subject:
        """Upscale every scalar image of ``data`` (``options``: ``UpscaleOptions`` fields)."""
        opts = UpscaleOptions(**options)
        subject = data if isinstance(data, tio.Subject) else tio.Subject(image=data)
        out: dict[str, Any] = {}
        for name, image in subject.items():
            if isinstance(image, tio.ScalarImage):
                result = self.upscale(image.data[0].numpy(), image.affine, tuple(image.spacing), opts)
                out[name] = _image(result.volume, result.affine)
                if result.std is not None:
                    out[f"{name}_std"] = _image(result.std, result.affine)
                out.setdefault("info", result.info)
        if not out:
            raise MeddiffError("nothing to upscale: the subject holds no scalar image")
        grid = next(v for v in out.values() if isinstance(v, tio.ScalarImage))
        for name, image in subject.items():
            if isinstance(image, tio.LabelMap):
                out[name] = tio.Resample(grid)(image)
        return tio.Subject(**out)

    def upscale(
        self, volume: np.ndarray, affine: np.ndarray, spacing: tuple[float, ...], options: UpscaleOptions
    ) -> UpscaleResult:
        """Super-resolve ``volume`` (3D, input intensity scale) and return it on its high-resolution grid."""
        if volume.ndim != 3:
            raise MeddiffError(f"a 3D volume is needed, got shape {volume.shape}")
        slice_axis = default_slice_axis(spacing, options.axis) if options.slice_axis is None else options.slice_axis
        axes = degraded_axes(options.axis, slice_axis)
        high_shape = tuple(n * options.scale if a in axes else n for a, n in enumerate(volume.shape))
        check_fits(high_shape, options.scale, axes, f"the {options.scale}x upscaled image", min_low=4)
        self._check_task(options)
        task = Task(options.scale, options.axis)
        low, intensity, shift = normalised_input(volume)
        normals = plane_normals(options.axis, slice_axis)
        info: dict[str, Any] = {
            **dataclasses.asdict(options),
            "method": self.method,
            "slice_axis": slice_axis,
            "intensity_range": intensity,
        }
        if self.model is None:
            mode = "bicubic" if options.axis == "inplane" else "bilinear"  # through-plane: linear along one axis
            families = tqdm(normals, desc=f"{mode} interpolation", disable=not options.progress, leave=False)
            outs = [np.mean([interpolate_volume(low, task, slice_axis, n, mode) for n in families], axis=0)]
        else:
            info["weights"], info["weights_sha256"] = str(self.folder), self.hash
            run = {
                "batch_size": options.batch_size,
                "tile": options.tile,
                "device": self.device,
                "progress": options.progress,
            }
            priors = None
            if self.prior is not None:  # residual diffusion: each plane family refines the regression's prediction
                info["prior_weights_sha256"] = self.prior.hash  # of that family (their mean is the regression's)
                priors = family_volumes(self.prior.model, self.prior.config, low, task, slice_axis, normals, **run)[0]
            outs = network_volumes(
                self.model,
                self.config,
                low,
                task,
                slice_axis,
                normals,
                priors=priors,
                samples=options.samples,
                steps=options.steps,
                sampler=options.sampler,
                seed=options.seed,
                **run,
            )
        results = [denormalise(o, intensity) + shift for o in outs]
        if options.data_consistency:
            projected = [physical_consistency(r, volume, options.scale, options.axis, slice_axis) for r in results]
            results = [r for r, _ in projected]
            info["data_consistency_error"] = max(e for _, e in projected)
        stack = np.stack(results)
        std = stack.std(axis=0).astype(np.float32) if len(results) > 1 else None
        out_affine = high_res_affine(affine, options.scale, options.axis, slice_axis)
        return UpscaleResult(stack.mean(axis=0).astype(np.float32), out_affine, std, info)

    def _check_task(self, options: UpscaleOptions) -> None:
        if self.model is None:
            return
        if self.prior is not None:
            self.prior._check_task(options)
        if options.scale not in self.config["scales"] or options.axis not in self.config["axes"]:
            raise MeddiffError(
                f"weights were trained for scales {self.config['scales']} on axes {self.config['axes']}, "
                f"not scale {options.scale} {options.axis}",
                self.folder,
            )


def _image(volume: np.ndarray, affine: np.ndarray) -> tio.ScalarImage:
    return tio.ScalarImage(tensor=torch.from_numpy(volume)[None], affine=affine)
