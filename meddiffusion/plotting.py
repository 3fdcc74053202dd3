"""Matplotlib without a display, and figures saved atomically like every other output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from meddiffusion.io import atomic_write  # noqa: E402


def subplots(rows: int, cols: int, size: tuple[float, float]):
    """A grid of axes (always 2D), off-screen."""
    return plt.subplots(rows, cols, figsize=size, squeeze=False)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Lay out, write to a temporary file, move into place, close."""
    fig.tight_layout()
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi), suffix=Path(path).suffix)
    finally:
        plt.close(fig)
