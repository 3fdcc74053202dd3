"""``meddiff seg predict``: a case (folder or one file per modality) -> a BraTS 2021 label map on its grid.

The weights declare the modalities they need, the training spacing, patch size and 2.5D neighbours; the
volume is prepared as in training, segmented plane by plane with MONAI's sliding-window inferer (Gaussian
blending), and the class probabilities are resampled back to the input grid before the argmax.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from monai.inferers import sliding_window_inference
from scipy import ndimage
from tqdm.auto import tqdm

from meddiffusion.data.layouts import MODALITIES, CaseFiles, read_case
from meddiffusion.data.prepare import prepare_subject
from meddiffusion.data.sampling import neighbour_stack
from meddiffusion.errors import MeddiffError
from meddiffusion.io import check_output, load_subject, modality_names, save_nifti, strip_suffix, write_json
from meddiffusion.provenance import provenance
from meddiffusion.segmentation.data import PLANE_AXIS, classes_to_labels
from meddiffusion.segmentation.models import SegNetworkConfig, build_network
from meddiffusion.weights import load_weights, pretrained, read_config, weights_hash

SHIPPED = "seg-dualpath"


@torch.no_grad()
def segment_prepared(
    model: torch.nn.Module,
    subject: tio.Subject,
    patch_size: int,
    neighbours: int,
    planes_per_batch: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """Class probabilities ``[K, X, Y, Z]`` of a prepared subject (its grid). Only the brain's bounding box
    is computed; outside it the background has probability 1."""
    channels = torch.stack([subject[m].data[0].float() for m in modality_names(subject)]).movedim(PLANE_AXIS + 1, 1)
    brain = (channels[0] != 0).numpy()
    device = next(model.parameters()).device
    n_classes = None
    coords = np.argwhere(brain)
    if coords.size == 0:
        raise MeddiffError(f"case {subject.get('case_id', '')}: the first modality is empty (a constant image)")
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(coords.min(0), coords.max(0), strict=True))
    planes = range(box[0].start, box[0].stop)
    outputs = []
    for start in tqdm(range(0, len(planes), planes_per_batch), desc="segment", disable=not progress, leave=False):
        index = torch.tensor(planes[start : start + planes_per_batch])
        # the training patches' channel order: modality-major, neighbours within each (data.sampling)
        stack = torch.cat([neighbour_stack(c[:, box[1], box[2]], index, neighbours) for c in channels], dim=1)
        stack = stack.to(device)
        probs = sliding_window_inference(
            stack,
            (patch_size, patch_size),
            planes_per_batch,
            lambda x: model(x).float().softmax(1),
            overlap=0.5,
            mode="gaussian",
        ).cpu()
        n_classes = probs.shape[1]
        outputs.append(probs)
    out = torch.zeros((n_classes, *channels.shape[1:]))
    out[0] = 1.0
    out[(slice(None), box[0], box[1], box[2])] = torch.cat(outputs).movedim(1, 0)
    return out.movedim(1, PLANE_AXIS + 1)


def postprocess(labels: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """Drop whole-tumour components smaller than ``min_fraction`` of the largest (26-connectivity), as nnU-Net's
    post-processing does for BraTS: isolated false-positive specks are what inflate HD95. Fixed a priori, not
    tuned on test cases; idempotent."""
    tumour = labels > 0
    components, n = ndimage.label(tumour, np.ones((3,) * labels.ndim, dtype=bool))
    if n <= 1:
        return labels
    sizes = ndimage.sum(tumour, components, index=np.arange(1, n + 1))
    keep = np.isin(components, 1 + np.flatnonzero(sizes >= min_fraction * sizes.max()))
    return np.where(keep, labels, 0).astype(labels.dtype)


class Segmenter:
    """A trained segmentation model with what it needs to be applied: modalities, spacing, patch size."""

    def __init__(self, folder: str | Path | None = None, device: str = "cpu") -> None:
        self.folder = Path(folder) if folder else pretrained(SHIPPED)
        if read_config(self.folder).get("task") != "segmentation":
            raise MeddiffError("these are not segmentation weights", self.folder)
        self.model, self.config = load_weights(self.folder, device, build=_build)
        self.modalities: list[str] = self.config["modalities"]
        self.hash = weights_hash(self.folder)

    def predict(self, subject: tio.Subject, progress: bool = False, clean: bool = True) -> np.ndarray:
        """Integer BraTS 2021 labels on the subject's grid (``clean``: with ``postprocess``)."""
        images = tio.Subject(**{m: subject[m] for m in self.modalities})
        prepared = prepare_subject(images, None, self.config.get("spacing"))
        probs = segment_prepared(
            self.model, prepared, self.config["patch_size"], self.config["neighbours"], progress=progress
        )
        if self.config.get("spacing"):  # back to the input grid, probabilities first, then the argmax
            reference = subject[self.modalities[0]]
            image = tio.ScalarImage(tensor=probs, affine=prepared[self.modalities[0]].affine)
            probs = tio.Resample(reference)(image).data
        labels = classes_to_labels(probs.argmax(0).numpy())
        return postprocess(labels) if clean else labels


def _build(config: dict) -> torch.nn.Module:
    network = SegNetworkConfig(**config["network"])
    in_channels = len(config["modalities"]) * (2 * config["neighbours"] + 1)
    return build_network(network, in_channels, len(config["class_labels"]))


def input_case(path: str | Path | None, files: Mapping[str, str | Path | None]) -> CaseFiles:
    """The case to segment: a case folder, or files given per modality (the files win over the folder's)."""
    given = {m: Path(f) for m, f in files.items() if f}
    if unknown := sorted(set(given) - set(MODALITIES)):
        raise MeddiffError(f"unknown modality {', '.join(unknown)}; use {', '.join(MODALITIES)}")
    if path is None and not given:
        raise MeddiffError("give a case folder or one file per modality (--flair F --t1ce F ...)")
    case = read_case(path) if path is not None else CaseFiles(strip_suffix(next(iter(given.values()))).name, {})
    case.images.update(given)
    return case


def predict_case(
    case: CaseFiles, output: str | Path, weights: str | Path | None = None, force: bool = False, clean: bool = True
) -> np.ndarray:
    """Segment one case into ``output`` (uint8 NIfTI, BraTS 2021 labels) plus ``<output>.json`` provenance."""
    output = Path(output)
    sidecar = strip_suffix(output).with_name(strip_suffix(output).name + ".json")
    for path in (output, sidecar):
        check_output(path, force)
    segmenter = Segmenter(weights)
    missing = [m for m in segmenter.modalities if m not in case.images]
    if missing:
        raise MeddiffError(
            f"the weights need modality {', '.join(missing)}, which case {case.case_id} lacks "
            f"(it has {', '.join(sorted(case.images)) or 'none'})"
        )
    subject = load_subject({m: case.images[m] for m in segmenter.modalities}, case_id=case.case_id)
    labels = segmenter.predict(subject, progress=True, clean=clean)
    reference = subject[segmenter.modalities[0]]
    save_nifti(labels.astype(np.uint8), reference.affine, output, force=force, label=True)
    write_json(
        provenance(
            inputs={m: str(case.images[m]) for m in segmenter.modalities},
            output=str(output),
            weights=str(segmenter.folder),
            weights_sha256=segmenter.hash,
            label_convention="brats2021",
            postprocessed=clean,
            voxels_per_label={int(v): int((labels == v).sum()) for v in np.unique(labels)},
        ),
        sidecar,
        force=force,
    )
    return labels
