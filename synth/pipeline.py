"""Painting a lesion of a requested size into a real brain MRI (the sampling pipeline of ``synth``).

1. ``masks.lesion_mask`` draws a tumour label map of the requested volume inside the brain.
2. The region to repaint is that lesion dilated by a few voxels (so it blends into the anatomy).
3. Plane by plane from the bottom up, the diffusion model paints every modality of the region, conditioned
   on the plane below (already painted: the volume stays continuous across slices), this plane and the one
   above with the region blanked, the lesion's regions, and the requested volume (log2 mL) through its
   embedding. The known voxels are re-imposed at every sampler step (RePaint-style, ``diffusion.sample``).
4. Outside the region the output is the input, voxel for voxel; inside, the painted values are mapped back to
   the input's intensity units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from tqdm.auto import tqdm

from meddiffusion.data.labels import to_brats2021
from meddiffusion.data.prepare import brain_range
from meddiffusion.data.sampling import pad_to
from meddiffusion.diffusion import build_diffusion_network, make_scheduler, sample
from meddiffusion.errors import MeddiffError
from meddiffusion.io import LABEL_KEY, voxel_volume_ml
from meddiffusion.paths import weights_folder
from meddiffusion.synth.data import PLANE_AXIS, build_cond, paint_region, regions_stack
from meddiffusion.synth.masks import TEMPLATES_FILE, WHITE_MATTER_CLASS, lesion_mask, load_templates, white_matter
from meddiffusion.transforms import brain_mask, denormalise, normalise
from meddiffusion.weights import check_device, load_weights, weights_hash

SHIPPED = "synth-inpaint"
MIN_WINDOW = 64


@dataclass
class LesionRequest:
    volume_ml: float
    foci: int = 1
    center: tuple[int, int, int] | None = None
    seed: int = 0
    steps: int = 10


@dataclass
class SynthesisResult:
    images: dict[str, np.ndarray]  # input intensity units, input grid
    label: np.ndarray  # BraTS 2021: the input's tumour (if labelled) plus the new lesion
    lesion: np.ndarray  # the new lesion alone
    painted: np.ndarray  # the voxels that were repainted (everything else is unchanged)
    info: dict


class LesionSynthesizer:
    """A trained inpainting model with its lesion-shape templates, as a pipeline: load once, call on data.

    ``LesionSynthesizer.from_pretrained()(subject, LesionRequest(5.0))`` returns the subject with the lesion
    painted into every modality the weights know and ``label`` holding the merged label map (BraTS 2021).
    """

    def __init__(self, model: torch.nn.Module, config: dict, folder: Path, device: str = "cpu") -> None:
        self.model, self.config, self.folder, self.device = model, config, folder, device
        self.modalities: list[str] = config["modalities"]
        self.optional: list[str] = config.get("optional_modalities", [])
        self.templates = load_templates(folder / TEMPLATES_FILE)
        self.scheduler = make_scheduler("ddim", **config["schedule"])
        self.hash = weights_hash(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str = "cpu") -> LesionSynthesizer:
        """Load a weights folder written by ``synth train``, or shipped weights by name (default: ``synth-inpaint``)."""
        folder = weights_folder(folder or SHIPPED)
        model, config = load_weights(folder, "synth", build_diffusion_network, check_device(device))
        return cls(model, config, folder, device)

    def __call__(
        self, subject: tio.Subject, request: LesionRequest, convention: str = "brats2021", progress: bool = False
    ) -> tio.Subject:
        """The subject with the lesion painted (same grids and affines) and its merged ``label``; the painted
        mask, the new lesion alone and the record ride along as ``painted``, ``lesion`` and ``info``."""
        result = self.synthesize(subject, request, convention, progress)
        out = tio.Subject(**{k: v for k, v in subject.items() if isinstance(v, tio.ScalarImage)})
        for m, volume in result.images.items():
            out[m] = tio.ScalarImage(tensor=torch.from_numpy(volume)[None], affine=subject[m].affine)
        affine = subject[result.info["modalities_painted"][0]].affine
        for key, volume in (("label", result.label), ("lesion", result.lesion), ("painted", result.painted)):
            out[key] = tio.LabelMap(tensor=torch.from_numpy(volume.astype(np.int16))[None], affine=affine)
        out["info"] = result.info
        return out

    def synthesize(
        self,
        subject: tio.Subject,
        request: LesionRequest,
        convention: str = "brats2021",
        progress: bool = False,
        avoid: np.ndarray | None = None,
    ) -> SynthesisResult:
        """Add a lesion to ``subject`` (the weights' modalities it has, at least the required ones; a label is
        kept and merged). Modalities the weights can do without are zero-filled, as in training, and not written.

        The lesion stays off the subject's own tumour (its label) and off ``avoid`` (e.g. a tumour a segmenter
        found in an unlabelled scan); painted values stay within each image's own range."""
        given = self.check_modalities(list(subject.keys()))
        raw = {m: subject[m].data[0].numpy().astype(np.float32) for m in given}
        first = subject[given[0]]
        existing = (
            to_brats2021(
                subject[LABEL_KEY].data[0].numpy().round().astype(np.int64), convention, subject[LABEL_KEY].path
            ).astype(np.uint8)
            if LABEL_KEY in subject
            else np.zeros(first.spatial_shape, dtype=np.uint8)
        )
        brain = brain_mask(raw[given[0]])
        rng = np.random.default_rng(request.seed)
        blocked = existing > 0 if avoid is None else (existing > 0) | np.asarray(avoid, dtype=bool)
        # white matter from the most telling contrast the subject has (T1 shows it best)
        tissue = next(m for m in (*WHITE_MATTER_CLASS, *given) if m in subject)
        prefer = white_matter(subject[tissue].data[0].numpy(), brain, tissue)
        lesion = lesion_mask(
            brain, first.spacing, request.volume_ml, self.templates, rng, request.foci, request.center, blocked, prefer
        )
        painted = paint_region(lesion, brain, self.config["margin"])
        ranges = {m: brain_range(v) for m, v in raw.items()}
        zero = np.zeros(brain.shape, np.float32)
        norm = np.stack(
            [np.where(brain, normalise(raw[m], ranges[m]), 0.0) if m in raw else zero for m in self.modalities]
        )
        filled = self._paint(norm, regions_stack(lesion), painted, request, progress)
        images, clipped = {}, 0
        for i, m in enumerate(self.modalities):
            if m not in raw:
                continue
            out = raw[m].copy()
            values = denormalise(filled[i], ranges[m])[painted]
            low, high = float(raw[m].min()), float(raw[m].max())  # no MRI magnitude outside the host's own range
            clipped += int(((values < low) | (values > high)).sum())
            out[painted] = np.clip(values, low, high)
            images[m] = out
        label = np.where(lesion > 0, lesion, existing).astype(np.uint8)
        voxel_ml = voxel_volume_ml(first.spacing)
        info = {
            "requested_volume_ml": request.volume_ml,
            "measured_volume_ml": float((lesion > 0).sum() * voxel_ml),
            "request": dataclasses.asdict(request),
            "painted_voxels": int(painted.sum()),
            "placement": f"white matter preferred (from {tissue})",
            "clipped_to_host_range": clipped,
            "modalities_painted": given,
            "weights": str(self.folder),
            "weights_sha256": self.hash,
        }
        return SynthesisResult(images, label, lesion, painted, info)

    def check_modalities(self, available: list[str]) -> list[str]:
        """The weights' modalities among ``available``; a required one missing (or none at all) is an error."""
        given = [m for m in self.modalities if m in available]
        missing = [m for m in self.modalities if m not in available and m not in self.optional]
        if missing or not given:
            raise MeddiffError(
                f"the synthesis weights need modality {', '.join(missing or self.modalities)}"
                + (f" (they paint {', '.join(self.modalities)} or any subset of them)" if not missing else "")
            )
        return given

    @torch.no_grad()
    def _paint(self, norm: np.ndarray, regions: np.ndarray, painted: np.ndarray, request, progress) -> np.ndarray:
        """Paint the region plane by plane, bottom up; returns the filled normalised volume ``[M, X, Y, Z]``."""
        current = torch.from_numpy(norm.astype(np.float32)).movedim(PLANE_AXIS + 1, 1)  # [M, Z, X, Y]
        hole = torch.from_numpy(painted).movedim(PLANE_AXIS, 0).float()
        regions_t = torch.from_numpy(regions).movedim(PLANE_AXIS + 1, 1)
        planes = torch.nonzero(hole.flatten(1).any(1)).flatten().tolist()
        generator = torch.Generator().manual_seed(request.seed)
        conditions = torch.tensor([[np.log2(request.volume_ml)]], dtype=torch.float32, device=self.device)
        for z in tqdm(planes, desc="paint", disable=not progress, leave=False):
            rows, cols = _window(hole[z], MIN_WINDOW, self.model.config.downsampling)
            window = (rows, cols)
            cond = build_cond(current, regions_t, hole, z, window)
            size = max(cond.shape[-2:])
            size += -size % self.model.config.downsampling
            known = pad_to(current[:, z][(slice(None), *window)], size)
            keep = pad_to((1 - hole[z][window])[None], size, mode="constant").expand_as(known)
            x = sample(
                self.model,
                self.scheduler,
                pad_to(cond, size)[None].to(self.device),
                conditions,
                request.steps,
                generator=generator,
                known=known[None].to(self.device),
                known_mask=keep[None].to(self.device),
            )[0].cpu()
            h, w = cond.shape[-2:]
            plane = current[:, z][(slice(None), *window)]
            current[:, z][(slice(None), *window)] = torch.where(hole[z][window].bool(), x[:, :h, :w], plane)
        return current.movedim(1, PLANE_AXIS + 1).numpy()


def _window(hole: torch.Tensor, minimum: int, multiple: int) -> tuple[slice, slice]:
    """An in-plane window around the region to paint: its bounding box plus 8 voxels, at least ``minimum``,
    a multiple of ``multiple`` where the image allows, kept inside the image."""
    coords = torch.nonzero(hole)
    out = []
    for axis, extent in enumerate(hole.shape):
        lo, hi = int(coords[:, axis].min()) - 8, int(coords[:, axis].max()) + 9
        size = max(hi - lo, minimum)
        size += -size % multiple
        size = min(size, extent)
        start = int(np.clip((lo + hi) // 2 - size // 2, 0, extent - size))
        out.append(slice(start, start + size))
    return out[0], out[1]
