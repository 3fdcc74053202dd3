"""File names and the cheap checks of input files, kept free of heavy imports (no torch, TorchIO or MONAI).

The command line checks every input file here before it imports the model code, so a typo, a folder where a
file belongs or a non-image file is answered in a second or two, not after ten seconds of imports. ``io``
reads volumes after the same check.
"""

from __future__ import annotations

from pathlib import Path

from meddiffusion.errors import MeddiffError

WEIGHTS_FILE = "model.safetensors"
CHECKPOINT = "checkpoint"  # a run folder's latest training state
TRAINER_STATE = "trainer_state.json"  # in it: step, training seconds, the invocations that trained it
PRETRAINED = Path(__file__).resolve().parent / "pretrained"  # the shipped weights folders
NIFTI_SUFFIXES = (".nii", ".nii.gz")
READ_SUFFIXES = (*NIFTI_SUFFIXES, ".mha", ".mhd")


def image_suffix(path: str | Path) -> str:
    """Return the recognised image suffix of ``path`` (``.nii.gz`` counts as one)."""
    name = Path(path).name.lower()
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def strip_suffix(path: str | Path) -> Path:
    """``a/b.nii.gz`` -> ``a/b``: the stem that sidecar files are named after."""
    path = Path(path)
    suffix = image_suffix(path)
    return path.with_name(path.name[: -len(suffix)]) if suffix else path.with_suffix("")


def sidecar(path: str | Path, tag: str = "", suffix: str = ".json") -> Path:
    """The file that goes beside output ``path``: ``out.nii.gz`` -> ``out.json`` (``tag="_std"``:
    ``out_std.nii.gz`` with ``suffix=".nii.gz"``)."""
    stem = strip_suffix(path)
    return stem.with_name(stem.name + tag + suffix)


def check_input_file(path: str | Path) -> Path:
    """A readable image file by its name and header: exists, is a file, has an image suffix, and (NIfTI) a
    header nibabel can parse. The voxels themselves are checked when ``io.load_image`` reads them."""
    path = Path(path)
    if not path.exists():
        raise MeddiffError("file not found", path)
    if path.is_dir():
        raise MeddiffError("is a folder; an image file is needed here", path)
    if not image_suffix(path):
        raise MeddiffError(f"not a NIfTI or MetaImage file (expected one of {', '.join(READ_SUFFIXES)})", path)
    if image_suffix(path) in NIFTI_SUFFIXES:
        import nibabel as nib  # light: numpy only

        try:
            nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for foreign or damaged headers
            raise MeddiffError(f"cannot be read as NIfTI ({type(exc).__name__}: {exc})", path) from exc
    return path


def check_output(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing file unless ``force``; return the path."""
    path = Path(path)
    if path.exists() and not force:
        raise MeddiffError("exists already (use --force to overwrite)", path)
    if not path.parent.exists():
        raise MeddiffError("output folder does not exist", path.parent)
    return path


def weights_folder(name_or_folder: str | Path) -> Path:
    """The one resolver of weights arguments (every ``from_pretrained``, ``--weights``, ``--init``), as diffusers
    takes a folder or a hub name: a folder that exists, else the shipped weights of that name (``seg-unet``);
    a bare name that is neither is an error listing the shipped names; other paths are returned as given (their
    loading says what is missing)."""
    path = Path(name_or_folder)
    if path.exists() or len(path.parts) != 1:
        return path
    if (PRETRAINED / path.name / WEIGHTS_FILE).is_file():
        return PRETRAINED / path.name
    shipped = sorted(p.parent.name for p in PRETRAINED.glob(f"*/{WEIGHTS_FILE}"))
    raise MeddiffError(f"no such folder, nor shipped weights of that name (shipped: {', '.join(shipped)})", path)
