"""A weights folder, as diffusers' ``save_pretrained`` lays it out: ``config.json`` + ``model.safetensors``.

``config.json`` holds the network config and whatever the task needs to use the model (scales, modalities,
normalisation); the training run's config and log sit beside it. The weights hash goes into every output's
provenance so a result can be traced to the exact file that made it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from meddiffusion.errors import MeddiffError
from meddiffusion.io import atomic_write, current_umask, write_json
from meddiffusion.paths import CHECKPOINT, TRAINER_STATE, WEIGHTS_FILE
from meddiffusion.provenance import file_sha256, provenance
from meddiffusion.serialise import json_text

CONFIG_FILE = "config.json"


def save_weights(folder: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write ``model`` (its state dict, contiguous tensors) and its ``config.json`` into ``folder`` atomically.

    ``config``: the family's weights config, whose ``network`` section its builder rebuilds the network from.
    """
    if "network" not in config:
        raise ValueError("a weights config needs the network section its builder rebuilds the network from")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)), suffix=".safetensors")
    text = json_text(config)
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(text + "\n"), suffix=".json")
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a weights folder, with a clear error if it is not one."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise MeddiffError(f"not a weights folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})", folder)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MeddiffError(f"invalid JSON ({exc})", path) from exc


#: task name in a weights config -> what a user would call those weights (for the error message)
TASKS = {"sr": "super-resolution", "segmentation": "segmentation", "synth": "lesion-synthesis"}


def load_weights(
    folder: str | Path,
    task: str,
    build: Callable[[dict[str, Any]], torch.nn.Module],
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the network from ``config.json`` with ``build`` (the family's builder, the one its trainer uses)
    and load its weights; returns (model in eval mode, config). Weights of another ``task`` are refused before
    anything is built: the one place every family checks it."""
    folder = Path(folder)
    config = read_config(folder)
    if config.get("task") != task:
        raise MeddiffError(
            f"these are {TASKS.get(config.get('task'), repr(config.get('task')))} weights, not {TASKS[task]} weights",
            folder,
        )
    try:
        model = build(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise MeddiffError(f"weights do not match their config ({exc})", folder) from exc
    return model.to(device).eval(), config


def record_run(folder: str | Path, n_parameters: int, run_dir: str | Path | None = None, files=()) -> None:
    """Complete a weights folder: copies of the run's ``files`` (logs, config; those that exist) and
    ``provenance.json`` with the weights hash and size, so the folder says how it was made on its own."""
    folder = Path(folder)
    for name in files:
        source = Path(run_dir) / name
        if source.exists():
            shutil.copyfile(source, folder / name)
    record = provenance(weights_sha256=weights_hash(folder), n_parameters=n_parameters)
    state = Path(run_dir) / CHECKPOINT / TRAINER_STATE if run_dir else None
    if state and state.exists():  # every invocation that trained the weights, with its code state
        record["segments"] = json.loads(state.read_text()).get("segments", [])
    write_json(record, folder / "provenance.json")


def copy_weights(source: str | Path, target: str | Path, force: bool = False) -> Path:
    """Copy a weights folder (a run's ``weights/`` into the package, say) with every relative path that its JSON
    records name re-based on the new place, those of folders inside it too (residual diffusion's ``prior``): the
    records keep naming the same data files. The copy is made beside ``target`` and moved into place, so a failure
    leaves no partial folder."""
    source, target = Path(source).resolve(), Path(target)
    read_config(source)
    if target.exists() and not force:
        raise MeddiffError("exists; use --force to overwrite", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        for record in staging.rglob("*.json"):
            inside = record.parent.relative_to(staging)  # each record names paths relative to its own folder
            text = json_text(_rebase(json.loads(record.read_text()), source / inside, target.resolve() / inside))
            record.write_text(text + "\n")
        os.chmod(staging, 0o777 & ~current_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _rebase(value: Any, old: Path, new: Path) -> Any:
    """Relative paths that name an existing file or folder outside ``old`` re-expressed from ``new`` (those inside
    it, such as residual diffusion's ``prior``, move with the folder and stay as they are)."""
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(value) and (old / value).exists():
        named = (old / value).resolve()
        return value if named.is_relative_to(old) else os.path.relpath(named, new)
    return value


def weights_hash(folder: str | Path) -> str:
    """SHA-256 of the weights file (first 16 hex digits are enough to tell versions apart)."""
    return file_sha256(Path(folder) / WEIGHTS_FILE)


def check_device(name: str) -> str:
    """``name`` if torch can run there (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else a one-line error."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise MeddiffError(f"unknown device {name!r} ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        built = "a CPU-only build" if torch.version.cuda is None else "no usable GPU here"
        raise MeddiffError(f"--device {name}: this torch ({torch.__version__}) has {built}; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MeddiffError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MeddiffError(f"--device {name}: MPS is not available here; use --device cpu")
    return name
