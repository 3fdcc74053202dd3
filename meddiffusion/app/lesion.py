"""``meddiff synth lesion`` as users have their data: one image of any modality, a case folder, or one file per
modality; and the tumour the new lesion must stay away from, from the case's label, a label map the user gives
(``--exclude-label``), or else found by the shipped segmenter. Combines segmentation and synthesis, so it lives in
the application layer.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from meddiffusion.data.layouts import CaseFiles, input_case, modality_from_name
from meddiffusion.errors import MeddiffError
from meddiffusion.io import LABEL_KEY, load_subject, voxel_volume_ml
from meddiffusion.paths import image_suffix
from meddiffusion.segmentation.predict import Segmenter


def lesion_case(path: str | None, files: Mapping[str, str | None], modality: str | None) -> CaseFiles:
    """The case to paint into: an image file (its modality from ``modality`` or its name), a case folder, or
    files given per modality (which win over the folder's)."""
    if path is not None and Path(path).is_file() and image_suffix(path):
        named = modality or modality_from_name(path)
        if named is None:
            raise MeddiffError("its name states no modality: say which with --modality flair|t1|t1ce|t2", path)
        return input_case(None, {**files, named: path})
    if modality is not None:
        raise MeddiffError("--modality names the modality of a single input image, not of a case folder")
    return input_case(path, files)


def tumour_to_avoid(case: CaseFiles, exclude_label: str | None) -> np.ndarray | None:
    """Voxels the new lesion must not touch besides the case's own label: ``exclude_label`` (any label > 0), or,
    for an unlabelled case, the tumour the shipped segmenter finds (when the case has the modalities it needs).
    Says on stderr what is avoided."""
    if exclude_label is not None:  # read beside an image, so a label on another grid is the usual error
        modality, image = next(iter(case.images.items()))
        label = load_subject({modality: image}, exclude_label)[LABEL_KEY]
        mask = label.data[0].numpy() > 0
        print(
            f"avoiding {mask.sum() * voxel_volume_ml(label.spacing):.1f} mL labelled in {exclude_label}",
            file=sys.stderr,
        )
        return mask
    if case.label is not None:
        return None
    segmenter = Segmenter.from_pretrained()
    try:
        used = segmenter.check_modalities(list(case.images), case.case_id)
    except MeddiffError as exc:
        print(
            f"could not look for an existing tumour ({exc}); give --exclude-label if the scan has one",
            file=sys.stderr,
        )
        return None
    subject = load_subject({m: case.images[m] for m in used})
    mask = segmenter.predict(subject) > 0
    found = mask.sum() * voxel_volume_ml(subject[used[0]].spacing)
    print(f"avoiding the tumour the shipped segmenter finds ({found:.1f} mL)", file=sys.stderr)
    return mask


def describe_outputs(outputs: Mapping[str, Path]) -> str:
    """The printed naming of the painted images (one line)."""
    return ", ".join(f"{m} -> {p}" for m, p in outputs.items())
