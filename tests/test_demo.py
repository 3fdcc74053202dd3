"""`meddiff demo` on the embedded real MRI with the shipped weights (the README's first command, made small)."""

import json
import shlex
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from meddiffusion.app.cli import main
from meddiffusion.paths import PRETRAINED


@pytest.mark.skipif(not (PRETRAINED / "sr-diffusion" / "model.safetensors").is_file(), reason="no shipped weights")
def test_demo_writes_volumes_panel_and_provenance(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--slices", "4", "--steps", "1", "--samples", "2"]) == 0
    reference = nib.load(out / "reference.nii.gz")
    for name in ("bicubic", "unet", "diffusion", "diffusion_std"):
        image = nib.load(out / f"{name}.nii.gz")
        assert image.shape == reference.shape == (160, 216, 4)
        assert np.allclose(image.affine, reference.affine)
    low = nib.load(out / "lowres.nii.gz")
    assert low.shape == (40, 54, 4) and np.allclose(low.header.get_zooms(), (4, 4, 1))
    assert np.asarray(nib.load(out / "diffusion_std.nii.gz").dataobj).max() > 0
    with Image.open(out / "panel.png") as png:
        assert png.size[0] > 1000
    # the learned methods beat interpolation on this held-out real slab (4x, T1c): data consistency alone
    # scores 24 dB here, so a network that outputs zeros (a zero residual, i.e. bicubic) fails
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["unet"]["psnr"] > metrics["bicubic"]["psnr"] + 0.4
    assert metrics["diffusion"]["psnr"] > metrics["bicubic"]["psnr"] + 0.1
    assert metrics["unet"]["hfen"] < metrics["bicubic"]["hfen"]
    record = json.loads((out / "provenance.json").read_text())
    assert len(record["weights_sha256"]["diffusion"]) == 64
    # how it was made: the exact command line, the code state (commit, dirty flag), the package versions
    assert record["command"] == shlex.join(sys.orig_argv) and {"commit", "dirty"} <= set(record["code"])
    assert record["packages"]["torch"].startswith("2.")
    assert main(["demo", "--out", str(out)]) == 2  # no overwrite without --force
    assert "--force" in capsys.readouterr().err
