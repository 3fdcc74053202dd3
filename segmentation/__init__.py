"""Dual-path tumour segmentation: the network (``dualpath``, ``deformable``), the model builder with the MONAI
baselines (``models``), the FLAIR-threshold floor (``threshold``), output coding (``coding``), losses (``losses``),
GradNorm reweighting (``reweighting``), the data path (``data``), the trainer (``train``), inference
(``predict``) and cross-validated ablations (``ablation``, ``variants``).
"""
