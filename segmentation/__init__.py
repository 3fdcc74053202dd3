"""Dual-path tumour segmentation: the network (``network``, ``deformable``), the baselines (``models``,
``baselines``), losses (``losses``), GradNorm reweighting (``reweighting``), the data path (``data``), the trainer
(``train``), inference (``predict``) and cross-validated ablations (``ablation``, ``variants``).
"""
