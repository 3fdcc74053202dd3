"""``meddiff data check``: validate a data-set folder and list every problem, one line each."""

from __future__ import annotations

from pathlib import Path

from meddiffusion.data.labels import check_labels
from meddiffusion.data.layouts import read_dataset
from meddiffusion.errors import MeddiffError
from meddiffusion.io import fmt_spacing, load_image, same_grid


def check_dataset(root: str | Path, layout: str | None = None) -> tuple[int, list[str]]:
    """Return (number of cases, problems): missing modalities, unreadable/truncated/2D/NaN files, grids that
    differ between a case's images and label, empty label maps and label values outside the case's convention."""
    cases = read_dataset(root, layout)
    problems: list[str] = []
    for case in cases:
        problems += [f"{case.case_id}: missing modality {m}" for m in case.missing]
        loaded = {}
        for name, path in [*case.images.items(), *([("label", case.label)] if case.label else [])]:
            try:
                loaded[name] = load_image(path, label=name == "label")
            except MeddiffError as exc:
                problems.append(f"{case.case_id}: {exc}")
        if not loaded:
            continue
        ref_name, ref = next(iter(loaded.items()))
        for image in loaded.values():
            if not same_grid(image, ref):
                problems.append(
                    f"{case.case_id}: {Path(image.path).name} grid {tuple(image.spatial_shape)} / "
                    f"{fmt_spacing(image.spacing)} differs from {ref_name}'s {tuple(ref.spatial_shape)} / "
                    f"{fmt_spacing(ref.spacing)}"
                )
        if "label" in loaded:
            values = loaded["label"].data[0].numpy()
            if not values.any():
                problems.append(f"{case.case_id}: label map {Path(case.label).name} is empty")
            try:
                check_labels(values, case.convention, case.label)
            except MeddiffError as exc:
                problems.append(f"{case.case_id}: {exc}")
    return len(cases), problems
