"""How a segmenter's outputs code the BraTS 2021 labels (0, 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing).

- ``regions`` (the default, nnU-Net's BraTS setting): three overlapping sigmoid channels for the evaluated regions
  whole tumour (1, 2, 4), tumour core (1, 4) and enhancing tumour (4). The loss then optimises exactly what BraTS
  scores, and a voxel's label is read off the nested regions: ET -> 4, else TC -> 1, else WT -> 2.
- ``classes``: one softmax over the four labels (background, 1, 2, 4), the earlier shipped weights' coding.

Training targets are class indices 0-3 (``labels_to_classes``) whatever the coding; the loss turns them into
region targets where needed, so the data path does not depend on the coding. One more, training-only class marks a
tumour core whose enhancing part the labels do not delineate (BRATS 2012, ``data.labels.UNDELINEATED``): it is
whole tumour and core, and the enhancing channel's loss leaves it out (``region_known``) instead of learning
"no enhancing tumour here" from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

OUTPUTS = ("regions", "classes")
#: network classes <-> BraTS 2021 labels (class 3 is label 4, enhancing tumour)
CLASS_LABELS = (0, 1, 2, 4)
REGION_NAMES = ("WT", "TC", "ET")
#: training-only class: tumour core whose enhancing part is undelineated (counts as WT and TC; ET unknown)
CORE_ET_UNKNOWN = 4
#: which classes each region holds
REGION_CLASSES = ((1, 2, 3, CORE_ET_UNKNOWN), (1, 3, CORE_ET_UNKNOWN), (3,))


def check_coding(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    return output


def n_outputs(output: str) -> int:
    return len(REGION_NAMES) if check_coding(output) == "regions" else len(CLASS_LABELS)


def labels_to_classes(label: np.ndarray | torch.Tensor, undelineated: Sequence[str] = ()) -> torch.Tensor:
    """BraTS 2021 labels -> training classes; where ``undelineated`` holds ``ET`` (the case's labels do not
    separate the enhancing part of the core), the core becomes ``CORE_ET_UNKNOWN``."""
    if unknown := set(undelineated) - {"ET"}:
        raise ValueError(f"only an undelineated ET region can be trained around, not {sorted(unknown)}")
    label = torch.as_tensor(np.asarray(label))
    classes = torch.where(label == 4, 3, label).long()
    return torch.where(classes == 1, CORE_ET_UNKNOWN, classes) if undelineated else classes


def classes_to_labels(classes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Training classes -> BraTS 2021 labels (``CORE_ET_UNKNOWN`` is core, 1, as its case's label map says)."""
    lookup = np.zeros(max(len(CLASS_LABELS), CORE_ET_UNKNOWN + 1), dtype=np.uint8)
    lookup[: len(CLASS_LABELS)] = CLASS_LABELS
    lookup[CORE_ET_UNKNOWN] = 1
    return lookup[np.asarray(classes)]


def classes_to_regions(classes: torch.Tensor) -> torch.Tensor:
    """``[B, 1, *S]`` class indices -> ``[B, 3, *S]`` float WT / TC / ET targets."""
    return torch.cat([torch.isin(classes, torch.tensor(c, device=classes.device)) for c in REGION_CLASSES], 1).float()


def region_known(classes: torch.Tensor) -> torch.Tensor:
    """``[B, 1, *S]`` class indices -> ``[B, 3, *S]`` bool: where each region's target is known (not in the ET
    channel on ``CORE_ET_UNKNOWN`` voxels)."""
    known = classes != CORE_ET_UNKNOWN
    return torch.cat([torch.ones_like(known), torch.ones_like(known), known], 1)


def activate(logits: torch.Tensor, output: str) -> torch.Tensor:
    """Probabilities from logits ``[B, K, *S]``: sigmoid per region, or softmax over classes."""
    return logits.sigmoid() if output == "regions" else logits.softmax(1)


def foreground(probs: torch.Tensor, output: str) -> torch.Tensor:
    """Whole-tumour probability ``[B, *S]``."""
    return probs[:, 0] if output == "regions" else 1.0 - probs[:, 0]


def decode(probs: torch.Tensor | np.ndarray, output: str, threshold: float = 0.5) -> np.ndarray:
    """``[K, *S]`` probabilities -> uint8 BraTS 2021 labels: nested regions (ET 4, else TC 1, else WT 2), or argmax."""
    probs = np.asarray(probs)
    if output == "classes":
        return classes_to_labels(probs.argmax(0))
    wt, tc, et = (probs[i] > threshold for i in range(3))
    labels = np.zeros(probs.shape[1:], dtype=np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 4
    return labels
