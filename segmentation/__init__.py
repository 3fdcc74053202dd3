"""Dual-path segmentation: the network (``network``), deformable attention (``deformable``), losses (``losses``).

Work in progress towards issue #8: the trainer, gradient reweighting, ``meddiff seg`` and shipped weights are
not in this release yet.
"""
