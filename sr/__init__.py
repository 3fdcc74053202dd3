"""MRI super-resolution: degradation models (``degradation``), the upscaling pipeline (``pipeline``),
training-pair data (``data``) and training (``train``)."""
