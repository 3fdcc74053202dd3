"""What every output records beside it: tool version, code version, command, seed, weights hash, time."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from meddiffusion import __version__


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (weights files can be tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: the packages whose versions decide a result, recorded in every provenance record
PACKAGES = ("torch", "diffusers", "monai", "torchio", "accelerate", "numpy", "scipy", "scikit-image", "nibabel")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace") if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_state() -> dict[str, Any]:
    """The code a process runs: the commit, whether the tree differed from it (and a hash of that difference,
    tracked and untracked files), or the package version outside a checkout. Read once per process and cached,
    so a long training run records the code it started with, not the tree as it is when it ends (trainers call
    this at their start)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"version": __version__, "commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=normal") or ""
    state: dict[str, Any] = {"version": __version__, "commit": commit.strip(), "dirty": bool(status.strip())}
    if state["dirty"]:
        diff = (_git("diff", "HEAD", "--binary") or "") + status
        state["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
    return state


def code_version() -> str:
    """A short form of ``code_state`` for reports: version+commit, with ``.dirty`` when the tree differed."""
    state = code_state()
    if not state["commit"]:
        return __version__
    return f"{__version__}+g{state['commit'][:7]}" + (".dirty" if state["dirty"] else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def invocation() -> dict[str, Any]:
    """This process: its exact command line, when it runs, and the code it started with."""
    return {
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "code": code_state(),
    }


def provenance(**fields: Any) -> dict[str, Any]:
    """A provenance record: the caller's fields plus where and with what it was made (the exact command line,
    the code state, the package versions)."""
    made = invocation()
    return {
        "tool": "meddiffusion",
        "version": code_version(),
        "code": made["code"],
        "created": made["created"],
        "command": made["command"],
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "machine": f"{platform.machine()} {platform.system()}",
        **fields,
    }
