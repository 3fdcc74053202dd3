"""Tumour label maps of a requested size, shaped like real tumours.

Shapes come from real expert labels (``templates``): a template's nested regions (whole tumour, core,
enhancing) are rotated, flipped, elastically deformed and rescaled, then placed inside the brain away from
any tumour already there. The scale is found by bisection so that the measured volume, after clipping to the
brain, matches the request (within 5 %, tested). Several foci share the requested volume. Written here:
TorchIO/MONAI deform images, but none places a lesion of a given volume.

Focus centers prefer white matter, where gliomas mostly grow (``white_matter``: a rough mask from the image's
own intensities, enough to steer placement).

Labels follow BraTS 2021: 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from meddiffusion.data.labels import region_masks
from meddiffusion.errors import MeddiffError
from meddiffusion.io import LABEL_KEY, voxel_volume_ml

#: the largest fraction of the free brain a requested lesion may take
MAX_BRAIN_FRACTION = 0.4
#: focus centers keep this far (mm) from the brain's edge where the brain allows (gliomas grow inside it)
EDGE_MM = 10.0
TOLERANCE = 0.05
#: where white matter falls among the brain's three intensity classes (CSF, grey, white matter sorted by
#: intensity): brightest in T1 and T1c, darkest in T2, between CSF and grey matter in FLAIR
WHITE_MATTER_CLASS = {"t1": 2, "t1ce": 2, "flair": 1, "t2": 0}
TEMPLATES_FILE = "templates.npz"
_SEVERITY = np.array([0, 2, 1, 0, 3])  # label -> rank: background < oedema (2) < core (1) < enhancing (4)


class PlacementError(MeddiffError):
    """The requested lesion does not fit where it was asked for (within the size tolerance)."""


@dataclass
class Template:
    """A real tumour's regions as a soft stack ``[3, X, Y, Z]`` (WT, TC, ET in [0, 1]) on a ``spacing`` grid."""

    regions: np.ndarray
    spacing: tuple[float, float, float]
    source: str = ""

    @classmethod
    def from_label(cls, label: np.ndarray, spacing: Sequence[float], source: str = "") -> Template:
        """Crop a BraTS 2021 label map to its tumour (plus a margin) and keep the nested regions."""
        masks = region_masks(label)
        if not masks["WT"].any():
            raise MeddiffError("a lesion template needs a non-empty label map", source or None)
        coords = np.argwhere(masks["WT"])
        lo, hi = np.maximum(coords.min(0) - 2, 0), np.minimum(coords.max(0) + 3, label.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        regions = np.stack([masks[k][box] for k in ("WT", "TC", "ET")]).astype(np.float32)
        return cls(regions, tuple(float(s) for s in spacing), source)

    def largest_component(self) -> Template:
        """The template's main focus (multifocal real tumours are split; the generator adds its own foci)."""
        labels, n = ndimage.label(self.regions[0] > 0.5)
        if n <= 1:
            return self
        sizes = ndimage.sum(labels > 0, labels, index=np.arange(1, n + 1))
        keep = labels == (1 + int(np.argmax(sizes)))
        return Template(self.regions * keep[None], self.spacing, self.source)


def ellipsoid_template(spacing: Sequence[float] = (1.0, 1.0, 1.0), radius_mm: float = 20.0) -> Template:
    """A fallback shape (oedema shell, core, enhancing rim) when no real labels are at hand."""
    n = int(np.ceil(2.6 * radius_mm / min(spacing)))
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for s in spacing], indexing="ij"))
    r = np.sqrt((grid**2).sum(0)) / radius_mm
    return Template(np.stack([r < 1.0, r < 0.6, (r < 0.6) & (r > 0.4)]).astype(np.float32), tuple(spacing))


def _warp(template: Template, rng: np.random.Generator) -> np.ndarray:
    """A random rigid + elastic variant of the template (same grid, resampled once, linear)."""
    regions = template.regions
    for axis in range(3):
        if rng.random() < 0.5:
            regions = np.flip(regions, axis=axis + 1)
    shape = np.array(regions.shape[1:])
    angle = np.deg2rad(rng.uniform(-30, 30))
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    # elastic: a smooth random displacement field of a few voxels
    displacement = [
        ndimage.gaussian_filter(rng.normal(0, 1, tuple(shape)), sigma=max(2.0, shape.min() / 8)) for _ in range(3)
    ]
    displacement = [d / (np.abs(d).max() + 1e-8) * 0.08 * shape.min() for d in displacement]
    center = (shape - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    coords = rotation @ (grid - center[:, None]) + center[:, None]
    coords = coords + np.stack([d.reshape(-1) for d in displacement])
    warped = [ndimage.map_coordinates(r, coords, order=1).reshape(tuple(shape)) for r in regions]
    return np.stack([ndimage.gaussian_filter(w, 1.0) for w in warped])  # smooth iso-surfaces at any scale


def _scaled(region: np.ndarray, zoom: Sequence[float]) -> np.ndarray:
    """``region`` resampled by ``zoom`` per axis about its center; continuous in ``zoom`` (unlike
    ``ndimage.zoom``, whose output grid jumps), so the lesion volume grows smoothly with the scale."""
    zoom = np.asarray(zoom, dtype=float)
    shape_in = np.array(region.shape)
    shape_out = np.ceil(shape_in * zoom).astype(int) + 2
    offset = (shape_in - 1) / 2 - ((shape_out - 1) / 2) / zoom
    return ndimage.affine_transform(region, 1.0 / zoom, offset=offset, output_shape=tuple(shape_out), order=1)


def _render(
    variants: Sequence[tuple[np.ndarray, tuple[float, ...]]],
    centers: Sequence[np.ndarray],
    factors: Sequence[float],
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    allowed: np.ndarray,
) -> np.ndarray:
    """Place every focus (regions zoomed by its factor, in mm) at its center; BraTS 2021 labels, clipped."""
    label = np.zeros(shape, dtype=np.uint8)
    for (regions, t_spacing), center, factor in zip(variants, centers, factors, strict=True):
        zoom = [factor * ts / s for ts, s in zip(t_spacing, spacing, strict=True)]
        if min(np.array(regions.shape[1:]) * zoom) < 1:
            continue
        wt, tc, et = (_scaled(r, zoom) > 0.5 for r in regions)
        focus = np.where(et & tc & wt, 4, np.where(tc & wt, 1, np.where(wt, 2, 0))).astype(np.uint8)
        start = np.round(center - (np.array(focus.shape) - 1) / 2).astype(int)
        lo, hi = np.maximum(start, 0), np.minimum(start + focus.shape, shape)
        if np.any(hi <= lo):
            continue
        target = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        source = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
        piece = focus[source]
        # where foci overlap the more malignant label wins (4 > 1 > 2 by severity)
        current = label[target]
        label[target] = np.where(_SEVERITY[piece] > _SEVERITY[current], piece, current)
    label[~allowed] = 0
    return label


def white_matter(volume: np.ndarray, brain: np.ndarray, modality: str) -> np.ndarray:
    """A rough white-matter mask from one image: the brain's intensities in three k-means classes (scipy), the
    class where white matter falls for that contrast (``WHITE_MATTER_CLASS``), opened to drop speckle. It steers
    where lesions are placed; it is not a tissue segmentation."""
    if modality not in WHITE_MATTER_CLASS:
        raise MeddiffError(f"no white-matter rule for modality {modality!r} (known: {', '.join(WHITE_MATTER_CLASS)})")
    values = volume[brain].astype(np.float64)
    if values.size < 3 or np.ptp(values) == 0:
        return np.zeros(volume.shape, dtype=bool)
    centroids, labels = kmeans2(values[:, None], 3, seed=0, minit="++")
    wanted = int(np.argsort(centroids[:, 0])[WHITE_MATTER_CLASS[modality]])
    mask = np.zeros(volume.shape, dtype=bool)
    mask[brain] = labels == wanted
    return ndimage.binary_opening(mask)


def lesion_mask(
    brain: np.ndarray,
    spacing: Sequence[float],
    volume_ml: float,
    templates: Sequence[Template],
    rng: np.random.Generator,
    foci: int = 1,
    center: Sequence[float] | None = None,
    avoid: np.ndarray | None = None,
    prefer: np.ndarray | None = None,
) -> np.ndarray:
    """A BraTS 2021 label map of ``volume_ml`` (whole tumour, all foci) inside ``brain``.

    ``center``: voxel indices of the first focus (others are placed within 40 mm of it); ``avoid``: voxels
    the lesion must not touch (e.g. a tumour the image already has); ``prefer``: where focus centers go when
    they can (e.g. ``white_matter``).
    """
    brain = np.asarray(brain, dtype=bool)
    if brain.ndim != 3:
        raise MeddiffError(f"lesions are placed in 3D volumes, got a {brain.ndim}D brain mask")
    if not volume_ml > 0:
        raise MeddiffError(f"the lesion volume must be > 0 mL, got {volume_ml}")
    if foci < 1:
        raise MeddiffError(f"the number of foci must be >= 1, got {foci}")
    if not templates:
        raise MeddiffError("no lesion templates given")
    spacing = tuple(float(s) for s in spacing)
    voxel_ml = voxel_volume_ml(spacing)
    allowed = brain & ~(ndimage.binary_dilation(avoid, iterations=3) if avoid is not None else False)
    capacity = allowed.sum() * voxel_ml
    if volume_ml > MAX_BRAIN_FRACTION * capacity:
        raise MeddiffError(
            f"a {volume_ml:g} mL lesion does not fit: the free brain holds {capacity:.0f} mL and a lesion may take "
            f"at most {MAX_BRAIN_FRACTION:.0%} of it ({MAX_BRAIN_FRACTION * capacity:.0f} mL)"
        )
    if center is not None:
        center = np.asarray(center, dtype=float)
        index = tuple(int(round(c)) for c in center)
        if len(index) != 3 or any(not 0 <= i < n for i, n in zip(index, brain.shape, strict=True)):
            raise MeddiffError(f"lesion center {tuple(center)} lies outside the image grid {brain.shape}")
        if not allowed[index]:
            raise MeddiffError(f"lesion center {index} lies outside the brain (or on the existing tumour)")
    shares = rng.dirichlet(np.full(foci, 4.0)) * volume_ml if foci > 1 else np.array([volume_ml])
    chosen = [templates[int(rng.integers(len(templates)))] for _ in range(foci)]
    variants = [(_warp(t, rng), t.spacing) for t in chosen]
    base = [
        (share / max(v[0].sum() * voxel_volume_ml(v[1]), 1e-9)) ** (1 / 3)
        for share, v in zip(shares, variants, strict=True)
    ]
    centers = _centers(allowed, spacing, shares, rng, center, prefer)
    target = volume_ml / voxel_ml

    def measure(m: float) -> tuple[np.ndarray, int]:
        label = _render(variants, centers, [b * m for b in base], brain.shape, spacing, allowed)
        return label, int((label > 0).sum())

    lo, hi = 0.3, 3.0
    best, best_err = None, np.inf
    for _ in range(40):  # volume grows with the scale: bisection on a common factor
        m = np.sqrt(lo * hi)
        label, n = measure(m)
        err = abs(n - target) / target
        if err < best_err:
            best, best_err = label, err
        if err <= TOLERANCE / 4:
            break
        lo, hi = (m, hi) if n < target else (lo, m)
    if best_err > TOLERANCE:
        raise PlacementError(
            f"could not place a {volume_ml:g} mL lesion within {TOLERANCE:.0%} here (got {best_err:.1%} off); "
            "try another center or fewer foci"
        )
    return best


def _centers(allowed, spacing, shares, rng, center, prefer=None) -> list[np.ndarray]:
    """Focus centers: deep enough inside the free brain for each focus's radius where possible, and inside
    ``prefer`` where that leaves any candidate."""
    depth = ndimage.distance_transform_edt(allowed, sampling=spacing)
    out = []
    for i, share in enumerate(shares):
        if i == 0 and center is not None:
            out.append(np.asarray(center, dtype=float))
            continue
        radius = (3 * share * 1000 / (4 * np.pi)) ** (1 / 3)  # mm, of a sphere of that volume
        ok = depth >= min(max(radius * 0.8, EDGE_MM), depth.max() * 0.8)
        if out:  # later foci near the first: multifocal, not scattered over the whole brain
            grid = np.indices(allowed.shape).reshape(3, -1).T * np.asarray(spacing)
            near = np.linalg.norm(grid - out[0] * np.asarray(spacing), axis=1).reshape(allowed.shape) <= 40
            ok = ok & near if (ok & near).any() else ok
        if prefer is not None and (ok & prefer).any():
            ok = ok & prefer
        candidates = np.argwhere(ok)
        out.append(candidates[int(rng.integers(len(candidates)))].astype(float))
    return out


def save_templates(subjects, path: Path) -> Path:
    """The training tumours' regions as lesion-shape templates (largest focus of each)."""
    arrays = {}
    for subject in subjects:
        label = subject[LABEL_KEY]
        template = Template.from_label(label.data[0].numpy(), label.spacing, subject["case_id"]).largest_component()
        arrays[f"{subject['case_id']}__regions"] = template.regions.astype(np.float16)
        arrays[f"{subject['case_id']}__spacing"] = np.asarray(template.spacing)
    np.savez_compressed(path, **arrays)
    return path


def load_templates(path: Path) -> list[Template]:
    if not path.is_file():
        raise MeddiffError("lesion templates not found", path)
    with np.load(path) as data:
        ids = sorted({k.rsplit("__", 1)[0] for k in data.files})
        return [
            Template(data[f"{i}__regions"].astype(np.float32), tuple(data[f"{i}__spacing"].tolist()), i) for i in ids
        ]
