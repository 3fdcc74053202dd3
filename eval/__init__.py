"""Evaluation: image quality (``image``), segmentation (``segmentation``), synthesis (``synthesis``),
paired statistics (``stats``) and reports (``report``)."""
