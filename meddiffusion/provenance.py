"""What every output records beside it: tool version, code version, command, seed, weights hash, time."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from meddiffusion import __version__


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (weights files can be tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """The git commit of the source tree when run from a checkout, else the package version."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            return f"{__version__}+g{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def provenance(**fields: Any) -> dict[str, Any]:
    """A provenance record: the caller's fields plus where and with what it was made."""
    return {
        "tool": "meddiffusion",
        "version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.system()}",
        **fields,
    }
