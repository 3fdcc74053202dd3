"""The one exception class for problems a user can cause (bad files, bad flags, bad configs)."""

from __future__ import annotations

from pathlib import Path


class MeddiffError(Exception):
    """A user-facing error: the CLI prints it as one line and exits with code 2."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
