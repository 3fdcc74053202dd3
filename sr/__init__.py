"""MRI super-resolution: degradation models (``degradation``), the upscaling pipeline (``pipeline``),
training-pair data (``data``) and training (``train``).

The method names live here, free of heavy imports, so the command line lists them without loading torch.
"""

#: upscaling methods: the diffusion model, the regression network on the same backbone, interpolation
METHODS = ("diffusion", "unet", "bicubic")
#: the methods ``sr train`` trains
TRAINED = ("diffusion", "unet")
#: what ``sr upscale`` uses unless told: the best method on the training configs' validation volumes
#: (``benchmarks/sr_benchmark.py --validation``; docs/benchmarks.md, issue #15). The regression model: residual
#: diffusion over it (1 step) scores the same there, within 0.02 dB, in twice the time.
DEFAULT_METHOD = "unet"
