"""Dual-path segmentation: the network (``network``), deformable attention (``deformable``), losses (``losses``)
and GradNorm loss reweighting (``reweighting``).

Work in progress towards issue #8: the trainer, ``meddiff seg`` and shipped weights are not in this release yet.
"""
