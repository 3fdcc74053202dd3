"""``meddiff seg predict``: a case (folder or one file per modality) -> a BraTS 2021 label map on its grid.

The weights declare the modalities they need, the training spacing, patch size and 2.5D neighbours; the
volume is prepared as in training, segmented plane by plane with MONAI's sliding-window inferer (Gaussian
blending), and the class probabilities are resampled back to the input grid before the argmax. How the planes
are tiled is an inference setting the weights carry (``INFERENCE``): training-size windows with an overlap, or
one window over the brain's in-plane box (the network is fully convolutional), with optional test-time flips.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from monai.inferers import sliding_window_inference
from scipy import ndimage
from tqdm.auto import tqdm

from meddiffusion.data.harmonise import harmonise
from meddiffusion.data.layouts import CaseFiles
from meddiffusion.data.prepare import prepare_subject, with_modalities
from meddiffusion.data.sampling import neighbour_stack
from meddiffusion.errors import MeddiffError
from meddiffusion.io import LABEL_KEY, check_output, load_subject, modality_names, save_nifti, write_json
from meddiffusion.paths import sidecar, weights_folder
from meddiffusion.provenance import provenance
from meddiffusion.segmentation.coding import activate, decode
from meddiffusion.segmentation.data import PLANE_AXIS
from meddiffusion.segmentation.models import SegNetworkConfig, build_from_weights_config
from meddiffusion.weights import load_weights, weights_hash

#: the default weights: the MONAI U-Net of configs/seg_unet.yaml (``seg-dualpath``: the dual-path model's)
SHIPPED = "seg-unet"
#: inference settings when the weights name none: ``window`` "plane" (one window per plane over the brain's box)
#: or "patch" (training-size windows, ``overlap``); ``mirror``: average over the in-plane flips (x4 time). One
#: window per plane: the same Dice as 128-pixel windows on the shipped model's validation cases in 45 % of the
#: time (docs/benchmarks.md)
INFERENCE = {"window": "plane", "overlap": 0.5, "mirror": False}
WINDOWS = ("patch", "plane")
#: post-processing when the weights name none: keep whole-tumour components of at least ``min_fraction`` of the
#: largest (fixed a priori); weights may carry a rule chosen on a cross-validation's out-of-fold predictions
#: (``meddiff seg postprocessing``), as nnU-Net chooses its own
POSTPROCESS = {"min_fraction": 0.1}


def _mirrored(predictor, x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation as nnU-Net does it: the mean of the predictions of the four in-plane flips."""
    flips = [(), (2,), (3,), (2, 3)]
    return sum(predictor(x.flip(f)).flip(f) if f else predictor(x) for f in flips) / len(flips)


@torch.no_grad()
def segment_prepared(
    model: torch.nn.Module,
    subject: tio.Subject,
    patch_size: int,
    neighbours: int,
    output: str,
    planes_per_batch: int = 16,
    progress: bool = False,
    overlap: float = 0.5,
    window: str = "patch",
    mirror: bool = False,
    multiple: int = 8,
) -> torch.Tensor:
    """Probabilities ``[K, X, Y, Z]`` of a prepared subject (its grid), in the network's ``output`` coding
    (``segmentation.coding``). Only the brain's bounding box is computed; outside it nothing is tumour.
    ``window="plane"``: one window per plane over the box, padded to a ``multiple`` the network accepts."""
    if window not in WINDOWS:
        raise MeddiffError(f"inference window must be one of {', '.join(WINDOWS)}, not {window!r}")
    channels = torch.stack([subject[m].data[0].float() for m in modality_names(subject)]).movedim(PLANE_AXIS + 1, 1)
    brain = (channels[0] != 0).numpy()
    device = next(model.parameters()).device
    n_classes = None
    coords = np.argwhere(brain)
    if coords.size == 0:
        raise MeddiffError(f"case {subject.get('case_id', '')}: the first modality is empty (a constant image)")
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(coords.min(0), coords.max(0), strict=True))
    planes = range(box[0].start, box[0].stop)
    roi = (patch_size, patch_size)
    if window == "plane":
        roi = tuple(max(-(-(b.stop - b.start) // multiple) * multiple, patch_size) for b in box[1:])

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return activate(model(x).float(), output)

    outputs = []
    for start in tqdm(range(0, len(planes), planes_per_batch), desc="segment", disable=not progress, leave=False):
        index = torch.tensor(planes[start : start + planes_per_batch])
        # the training patches' channel order: modality-major, neighbours within each (data.sampling)
        stack = torch.cat([neighbour_stack(c[:, box[1], box[2]], index, neighbours) for c in channels], dim=1)
        stack = stack.to(device)
        probs = sliding_window_inference(
            stack,
            roi,
            planes_per_batch,
            (lambda x: _mirrored(predictor, x)) if mirror else predictor,
            overlap=overlap,
            mode="gaussian",
        ).cpu()
        n_classes = probs.shape[1]
        outputs.append(probs)
    out = torch.zeros((n_classes, *channels.shape[1:]))
    if output == "classes":
        out[0] = 1.0
    out[(slice(None), box[0], box[1], box[2])] = torch.cat(outputs).movedim(1, 0)
    return out.movedim(1, PLANE_AXIS + 1)


def postprocess_rule(config: dict) -> float:
    """The ``min_fraction`` a weights config's post-processing uses: its own rule, else ``POSTPROCESS``."""
    return float(config.get("postprocess", {}).get("min_fraction", POSTPROCESS["min_fraction"]))


def postprocess(labels: np.ndarray, min_fraction: float = POSTPROCESS["min_fraction"]) -> np.ndarray:
    """Drop whole-tumour components smaller than ``min_fraction`` of the largest (26-connectivity; 1.0 keeps the
    largest alone, nnU-Net's "all but the largest component" removal): isolated false positives inflate HD95.
    Idempotent, and a stricter rule applied after a milder one gives what it gives alone (the largest component
    is always kept), so saved predictions can be re-scored under stricter rules."""
    tumour = labels > 0
    components, n = ndimage.label(tumour, np.ones((3,) * labels.ndim, dtype=bool))
    if n <= 1:
        return labels
    sizes = ndimage.sum(tumour, components, index=np.arange(1, n + 1))
    keep = np.isin(components, 1 + np.flatnonzero(sizes >= min_fraction * sizes.max()))
    return np.where(keep, labels, 0).astype(labels.dtype)


class Segmenter:
    """A trained segmentation model with what it needs to be applied: modalities (which of them it can do
    without), spacing, patch size, output coding. Weights load once, in ``from_pretrained``."""

    def __init__(self, model: torch.nn.Module, config: dict, folder: Path) -> None:
        self.model, self.config, self.folder = model, config, folder
        self.modalities: list[str] = config["modalities"]
        self.optional: list[str] = config.get("optional_modalities", [])
        self.output: str = config["network"]["output"]
        self.hash = weights_hash(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str = "cpu") -> Segmenter:
        """Load a weights folder or shipped weights by name (default: the shipped ``seg-unet``)."""
        folder = weights_folder(folder or SHIPPED)
        model, config = load_weights(folder, "segmentation", build_from_weights_config, device)
        return cls(model, config, folder)

    @property
    def required(self) -> list[str]:
        return [m for m in self.modalities if m not in self.optional]

    def check_modalities(self, available: Sequence[str], case_id: str = "case") -> list[str]:
        """The modalities of ``available`` this model uses; a required one missing is an error naming it."""
        if missing := [m for m in self.required if m not in available]:
            raise MeddiffError(
                f"the weights need modality {', '.join(missing)}, which case {case_id} lacks "
                f"(it has {', '.join(sorted(available)) or 'none'})"
            )
        return [m for m in self.modalities if m in available]

    @property
    def inference(self) -> dict:
        """Window, overlap and flips: the weights' own (chosen on validation cases when they were shipped) over
        ``INFERENCE``."""
        chosen = self.config.get("inference", {})
        return {k: chosen.get(k, default) for k, default in INFERENCE.items()}

    @property
    def min_fraction(self) -> float:
        """The post-processing rule: the weights' own (``meddiff seg postprocessing``) over ``POSTPROCESS``."""
        return postprocess_rule(self.config)

    def __call__(
        self, subject: tio.Subject, progress: bool = False, clean: bool = True, landmarks: dict | None = None
    ) -> tio.Subject:
        """Segment a subject (its images named by modality) -> a subject holding ``label`` (BraTS 2021 labels
        on the grid of the first image used, its affine) beside the images it was given. ``landmarks``: the
        site's intensity landmarks (``data.harmonise``) for a model federated with per-site harmonisation."""
        used = self.check_modalities(modality_names(subject), subject.get("case_id", "case"))
        images = tio.Subject(**{m: subject[m] for m in used})
        prepared = with_modalities(prepare_subject(images, None, self.config.get("spacing")), self.modalities)
        if landmarks:
            prepared = harmonise(prepared, landmarks)
        probs = segment_prepared(
            self.model,
            prepared,
            self.config["patch_size"],
            self.config["neighbours"],
            self.output,
            progress=progress,
            multiple=SegNetworkConfig(**self.config["network"]).size_multiple,
            **self.inference,
        )
        reference = subject[used[0]]
        if self.config.get("spacing"):  # back to the input grid, probabilities first, then the decision
            image = tio.ScalarImage(tensor=probs, affine=prepared[used[0]].affine)
            probs = tio.Resample(reference)(image).data
        labels = decode(probs.numpy(), self.output)
        labels = postprocess(labels, self.min_fraction) if clean else labels
        out = tio.Subject(**{k: v for k, v in subject.items() if isinstance(v, tio.Image)})
        out[LABEL_KEY] = tio.LabelMap(tensor=torch.from_numpy(labels[None]), affine=reference.affine)
        out["case_id"] = subject.get("case_id", "case")
        out["modalities_used"] = used
        return out

    def predict(
        self, subject: tio.Subject, progress: bool = False, clean: bool = True, landmarks: dict | None = None
    ) -> np.ndarray:
        """The label map alone (uint8, BraTS 2021 labels), for scoring loops."""
        return self(subject, progress, clean, landmarks)[LABEL_KEY].data[0].numpy().astype(np.uint8)


def predict_case(
    case: CaseFiles,
    output: str | Path,
    weights: str | Path | None = None,
    force: bool = False,
    clean: bool = True,
    flips: bool = False,
) -> np.ndarray:
    """Segment one case into ``output`` (uint8 NIfTI, BraTS 2021 labels) plus ``<output>.json`` provenance.
    ``flips``: test-time flips on, whatever the weights choose."""
    output = Path(output)
    record = sidecar(output)
    for path in (output, record):
        check_output(path, force)
    segmenter = Segmenter.from_pretrained(weights)
    if flips:
        segmenter.config = {**segmenter.config, "inference": {**segmenter.inference, "mirror": True}}
    used = segmenter.check_modalities(list(case.images), case.case_id)
    absent = [m for m in segmenter.modalities if m not in used]
    print(
        f"weights {segmenter.folder} ({segmenter.hash[:12]}); modalities used: {', '.join(used)}"
        + (f"; without {', '.join(absent)} (zero-filled, as trained with modality dropout)" if absent else ""),
        file=sys.stderr,
    )
    subject = load_subject({m: case.images[m] for m in used}, case_id=case.case_id)
    result = segmenter(subject, progress=True, clean=clean)
    labels = result[LABEL_KEY].data[0].numpy().astype(np.uint8)
    save_nifti(labels, result[LABEL_KEY].affine, output, force=force, label=True)
    write_json(
        provenance(
            inputs={m: str(case.images[m]) for m in used},
            modalities_zero_filled=absent,
            output=str(output),
            weights=str(segmenter.folder),
            weights_sha256=segmenter.hash,
            label_convention="brats2021",
            postprocessed={"min_fraction": segmenter.min_fraction} if clean else False,
            inference=segmenter.inference,
            voxels_per_label={int(v): int((labels == v).sum()) for v in np.unique(labels)},
        ),
        record,
        force=force,
    )
    return labels
