"""meddiffusion: diffusion-based MRI super-resolution and lesion-size-conditioned augmentation."""

__version__ = "0.1.0"
