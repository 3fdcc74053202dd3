"""Lesion-size-conditioned synthesis: lesion masks (``masks``), the inpainting model and pipeline."""
