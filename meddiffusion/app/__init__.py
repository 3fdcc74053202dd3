"""The application layer: the ``meddiff`` command line (``cli``), the demo (``demo``), the cross-validated
ablation (``ablation``) and the augmentation study (``study``). These are the only modules that combine several
families (super-resolution, synthesis, segmentation, evaluation); the families import only the core package.
"""
