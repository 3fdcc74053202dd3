"""The segmentation data path: prepared subjects (``data.prepare``) -> 2.5D training patches.

Training items are 2.5D patches (a plane and its neighbours, every modality) balanced between tumour and
anywhere in the brain, with the proposal's augmentation (rotation +-15 deg in plane with p = 0.5, gamma
0.8-1.2, noise sigma <= 0.01, TorchIO). Item ``i`` is a pure function of (seed, i): runs resume exactly.
Synthetic cases mix in at a fixed ratio, so real-only and real + synthetic runs differ by one number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset

from meddiffusion.data.prepare import UNDELINEATED_KEY
from meddiffusion.data.sampling import PatchSampler, neighbour_stack, pad_to
from meddiffusion.errors import MeddiffError
from meddiffusion.io import LABEL_KEY, modality_names
from meddiffusion.segmentation.coding import labels_to_classes
from meddiffusion.transforms import augmentation, seeded_rng

PLANE_AXIS = 2  # axial planes of RAS/LPS volumes


class SegPatches(Dataset):
    """2.5D patches ``image`` [modalities x (2n+1), P, P] and ``label`` [1, P, P] (training classes, ``coding``).

    ``synthetic`` subjects are drawn for a ``synthetic_ratio`` fraction of items. Patches are cut with a
    margin, rotated, then cropped to ``patch_size`` so that rotation leaves no empty corners. Modality dropout:
    each ``optional`` modality is zeroed with probability ``modality_dropout`` per item, as a case that lacks it
    is read (``data.prepare.load_case`` fills it with zeros), so one model serves both.
    """

    def __init__(
        self,
        subjects: Sequence[tio.Subject],
        patch_size: int = 64,
        neighbours: int = 1,
        foreground_p: float = 0.5,
        augment: bool = True,
        synthetic: Sequence[tio.Subject] = (),
        synthetic_ratio: float = 0.0,
        seed: int = 0,
        length: int = 10**9,
        optional: Sequence[str] = (),
        modality_dropout: float = 0.0,
    ) -> None:
        if not subjects:
            raise MeddiffError("no training cases")
        if synthetic_ratio and not synthetic:
            raise MeddiffError("a synthetic ratio was given but no synthetic cases")
        if not 0.0 <= synthetic_ratio < 1.0:
            raise MeddiffError(f"synthetic ratio must be in [0, 1), got {synthetic_ratio}")
        self.patch_size, self.neighbours, self.seed, self.length = patch_size, neighbours, seed, length
        self.margin = math.ceil(0.2 * patch_size) if augment else 0
        self.synthetic_ratio = synthetic_ratio
        # rotate in the plane only: the patch is one plane thick
        self.transform = augmentation(rotation_axis=PLANE_AXIS) if augment else None
        self.foreground_p = foreground_p
        names = modality_names(subjects[0])
        self.optional = [names.index(m) for m in optional]
        self.modality_dropout = modality_dropout if self.optional else 0.0
        self.real = [self._index(s) for s in subjects]
        self.synthetic = [self._index(s) for s in synthetic]

    def _index(self, subject: tio.Subject):
        if LABEL_KEY not in subject:
            raise MeddiffError(f"case {subject.get('case_id')} has no label map")
        channels = torch.stack([subject[m].data[0] for m in modality_names(subject)]).movedim(PLANE_AXIS + 1, 1)
        label = labels_to_classes(subject[LABEL_KEY].data[0], subject.get(UNDELINEATED_KEY, ())).movedim(PLANE_AXIS, 0)
        if not (label > 0).any():
            raise MeddiffError(f"case {subject.get('case_id')} has an empty label map")
        # background patches come from the brain, not the air around it
        size = self.patch_size + 2 * self.margin
        return channels, label, PatchSampler(label > 0, size), PatchSampler(channels[0] != 0, size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        pool = self.synthetic if self.synthetic and rng.random() < self.synthetic_ratio else self.real
        channels, label, tumour, brain = pool[rng.integers(len(pool))]
        plane, window = (tumour if rng.random() < self.foreground_p else brain)(rng)
        size = self.patch_size + 2 * self.margin
        image = torch.cat([neighbour_stack(c, plane, self.neighbours)[0] for c in channels])
        image = pad_to(image[(slice(None), *window)], size)
        target = pad_to(label[plane][window], size, mode="constant")
        if self.transform is not None:
            image, target = self._augment(image, target, int(rng.integers(2**31)))
        if self.modality_dropout:  # whole modalities (all their planes) zeroed, as a case without them reads
            group = 2 * self.neighbours + 1
            for k in self.optional:
                if rng.random() < self.modality_dropout:
                    image[k * group : (k + 1) * group] = 0.0
        m = self.margin
        crop = (slice(m, m + self.patch_size), slice(m, m + self.patch_size))
        return {"image": image[(slice(None), *crop)].contiguous(), "label": target[None][(slice(None), *crop)]}

    def _augment(self, image: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with seeded_rng(seed):
            subject = tio.Subject(
                image=tio.ScalarImage(tensor=image[..., None].float()),
                label=tio.LabelMap(tensor=label[None, ..., None].to(torch.int16)),
            )
            out = self.transform(subject)
        return out["image"].data[..., 0].float(), out["label"].data[0, ..., 0].long()
