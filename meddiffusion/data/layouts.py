"""Data-set layouts read from disk into a list of cases (modality files + optional label).

Readers: BraTS 2021 (``CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz``), BraTS 2023
(``CASE/CASE-{t1n,t1c,t2w,t2f,seg}.nii.gz``), nnU-Net raw (``dataset.json``, ``imagesTr/``, ``labelsTr/``) and
a plain CSV list (``case_id,<modality>...,label[,convention]``). Each case records its label convention
(``data.labels``): BraTS 2023 folders use theirs, other layouts BraTS 2021 unless a list says otherwise.
Modalities are renamed to the BraTS 2021 names (t1, t1ce, t2, flair) so that weights declare their inputs once,
whatever layout a user has.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torchio as tio

from meddiffusion.errors import MeddiffError
from meddiffusion.io import load_subject
from meddiffusion.paths import image_suffix, strip_suffix

LAYOUTS = ("brats2021", "brats2023", "nnunet", "list")
MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS2023_NAMES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
NNUNET_NAMES = {"t1": "t1", "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t2": "t2", "flair": "flair", "t2f": "flair"}


@dataclass
class CaseFiles:
    """One case on disk: modality name -> file, and its label map if it has one."""

    case_id: str
    images: dict[str, Path]
    label: Path | None = None
    expected: tuple[str, ...] = field(default=())
    convention: str = "brats2021"

    @property
    def missing(self) -> list[str]:
        return [m for m in self.expected if m not in self.images]

    def load(self, modalities: tuple[str, ...] | None = None) -> tio.Subject:
        """Read the case into a subject (only ``modalities`` if given; a missing one is an error)."""
        wanted = modalities or tuple(self.images)
        absent = [m for m in wanted if m not in self.images]
        if absent:
            raise MeddiffError(f"case {self.case_id} lacks modality {', '.join(absent)}")
        return load_subject({m: self.images[m] for m in wanted}, self.label, case_id=self.case_id)


def patient_id(case_id: str) -> str:
    """The patient a case belongs to: BraTS 2023 ids end in a time-point (``-000``), stripped here."""
    return re.sub(r"-\d{3}$", "", case_id)


def detect_layout(root: str | Path) -> str:
    root = Path(root)
    if root.is_file():
        return "list"
    if not root.is_dir():
        raise MeddiffError("data set not found", root)
    if (root / "dataset.json").is_file():
        return "nnunet"
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        names = [p.name for p in case.iterdir()]
        if any(re.match(rf"{re.escape(case.name)}-(t1n|t1c|t2w|t2f)\.nii(\.gz)?$", n) for n in names):
            return "brats2023"
        if any(re.match(rf"{re.escape(case.name)}_(t1|t1ce|t2|flair)\.nii(\.gz)?$", n) for n in names):
            return "brats2021"
    raise MeddiffError(f"no known layout ({', '.join(LAYOUTS)}) found", root)


def read_dataset(root: str | Path, layout: str | None = None) -> list[CaseFiles]:
    """All cases of a data set, sorted by case id."""
    root = Path(root)
    layout = layout or detect_layout(root)
    readers = {"brats2021": _read_brats2021, "brats2023": _read_brats2023, "nnunet": _read_nnunet, "list": _read_list}
    if layout not in readers:
        raise MeddiffError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    cases = readers[layout](root)
    if not cases:
        raise MeddiffError(f"no cases found ({layout} layout)", root)
    return sorted(cases, key=lambda c: c.case_id)


def _read_brats(root: Path, sep: str, names: dict[str, str], convention: str) -> list[CaseFiles]:
    cases = [
        _read_brats_case(folder, sep, names, convention) for folder in sorted(p for p in root.iterdir() if p.is_dir())
    ]
    return [c for c in cases if c.images or c.label]


def _read_brats_case(folder: Path, sep: str, names: dict[str, str], convention: str) -> CaseFiles:
    images, label = {}, None
    for path in folder.iterdir():
        suffix = image_suffix(path)
        if not suffix or not path.name.startswith(folder.name + sep):
            continue
        key = path.name[len(folder.name) + 1 : -len(suffix)].lower()
        if key == "seg":
            label = path
        elif key in names:
            images[names[key]] = path
    return CaseFiles(folder.name, images, label, expected=MODALITIES, convention=convention)


def read_case(folder: str | Path) -> CaseFiles:
    """One case folder in BraTS 2021 (``CASE/CASE_flair.nii.gz``) or BraTS 2023 (``CASE/CASE-t2f.nii.gz``) naming."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MeddiffError("case folder not found", folder)
    for sep, names, convention in (("_", {m: m for m in MODALITIES}, "brats2021"), ("-", BRATS2023_NAMES, "brats2023")):
        case = _read_brats_case(folder, sep, names, convention)
        if case.images:
            return case
    raise MeddiffError(
        f"no modality files named {folder.name}_<t1|t1ce|t2|flair>.nii.gz or {folder.name}-<t1n|t1c|t2w|t2f>.nii.gz",
        folder,
    )


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


#: file-name tokens -> modality, most specific first (``TCGA-FG-6692_T1_AX_POST_GAD`` is T1ce, not T1)
NAME_TOKENS = (
    ("flair", "flair"),
    ("t2f", "flair"),
    ("t1ce", "t1ce"),
    ("t1c", "t1ce"),
    ("t1gd", "t1ce"),
    ("gad", "t1ce"),
    ("t2w", "t2"),
    ("t2", "t2"),
    ("t1n", "t1"),
    ("t1", "t1"),
)


def modality_from_name(path: str | Path) -> str | None:
    """The modality a file's name states (``..._FLAIR.nii.gz``, ``...-t1c.nii.gz``, ``..._T1_AX_POST_GAD...``)."""
    tokens = set(re.split(r"[_\-. ]+", strip_suffix(path).name.lower()))
    return next((modality for token, modality in NAME_TOKENS if token in tokens), None)


def _is_label_name(path: Path) -> bool:
    tokens = set(re.split(r"[_\-. ]+", strip_suffix(path).name.lower()))
    return bool(tokens & {"seg", "truth", "label", "labels", "otmulticlass", "brainmask", "mask"})


def read_volumes(paths: Sequence[str | Path]) -> list[CaseFiles]:
    """Unlabelled volumes as cases: a data set (a folder in any layout ``read_dataset`` knows, or a CSV list) gives
    its cases, a case folder its modalities, an image file (or each file of a folder of them) one case with the
    modality its name states. A file whose name states no modality is an error naming it. Labels are not read."""
    cases: list[CaseFiles] = []
    for entry in map(Path, paths):
        if entry.is_file() and not image_suffix(entry):  # a CSV list of cases
            cases += [CaseFiles(c.case_id, c.images) for c in read_dataset(entry)]
            continue
        if entry.is_file():
            files = [entry]
        elif entry.is_dir():
            try:
                cases += [CaseFiles(c.case_id, c.images) for c in read_dataset(entry)]
                continue
            except MeddiffError:
                pass
            try:
                cases.append(CaseFiles(entry.name, read_case(entry).images))
                continue
            except MeddiffError:
                files = sorted(p for p in entry.iterdir() if image_suffix(p) and not _is_label_name(p))
        else:
            raise MeddiffError("not found", entry)
        for path in files:
            modality = modality_from_name(path)
            if modality is None:
                raise MeddiffError(f"its name states no modality ({', '.join(MODALITIES)}); rename it", path)
            cases.append(CaseFiles(strip_suffix(path).name, {modality: path}))
    if not cases:
        raise MeddiffError(f"no image volumes in {', '.join(map(str, paths))}")
    return cases


def _read_brats2021(root: Path) -> list[CaseFiles]:
    return _read_brats(root, "_", {m: m for m in MODALITIES}, "brats2021")


def _read_brats2023(root: Path) -> list[CaseFiles]:
    return _read_brats(root, "-", BRATS2023_NAMES, "brats2023")


def _read_nnunet(root: Path) -> list[CaseFiles]:
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        channels = meta.get("channel_names") or meta["modality"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise MeddiffError(f"invalid nnU-Net dataset.json ({exc})", meta_path) from exc
    ending = meta.get("file_ending", ".nii.gz")
    names = {int(k): NNUNET_NAMES.get(str(v).lower(), str(v).lower()) for k, v in channels.items()}
    cases: dict[str, CaseFiles] = {}
    pattern = re.compile(rf"^(.*)_(\d{{4}}){re.escape(ending)}$")
    images_dir = root / "imagesTr"
    if not images_dir.is_dir():
        raise MeddiffError("nnU-Net data set has no imagesTr/ folder", root)
    for path in sorted(images_dir.iterdir()):
        match = pattern.match(path.name)
        if not match:
            continue
        case_id, channel = match.group(1), int(match.group(2))
        case = cases.setdefault(case_id, CaseFiles(case_id, {}, None, expected=tuple(names.values())))
        case.images[names.get(channel, f"channel{channel}")] = path
    for case_id, case in cases.items():
        label = root / "labelsTr" / f"{case_id}{ending}"
        case.label = label if label.exists() else None
    return list(cases.values())


def _read_list(path: Path) -> list[CaseFiles]:
    """CSV with a ``case_id`` column, one column per modality, an optional ``label`` column and an optional
    ``convention`` column (the label convention, e.g. ``brats2015``; BraTS 2021 when absent).

    Relative paths are taken relative to the CSV's folder.
    """
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "case_id" not in rows[0]:
        raise MeddiffError("a file list must be a CSV with a 'case_id' column", path)
    modalities = tuple(k for k in rows[0] if k not in ("case_id", "label", "convention"))
    cases = []
    for row in rows:
        images = {m: path.parent / row[m] for m in modalities if row.get(m)}
        label = path.parent / row["label"] if row.get("label") else None
        convention = row.get("convention") or "brats2021"
        cases.append(CaseFiles(row["case_id"], images, label, expected=modalities, convention=convention))
    return cases
