"""MRI super-resolution: degradation models (``degradation``), the upscaling pipeline (``pipeline``),
training-pair data (``data``) and training (``train``).

The method names live here, free of heavy imports, so the command line lists them without loading torch.
"""

#: upscaling methods: the diffusion model, the regression network on the same backbone, interpolation
METHODS = ("diffusion", "unet", "bicubic")
#: the methods ``sr train`` trains
TRAINED = ("diffusion", "unet")
