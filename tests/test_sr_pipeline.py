"""Whole-volume super-resolution: geometry, alignment, errors, and the shipped weights."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import write_nifti
from meddiffusion.cli import main
from meddiffusion.diffusion import ConditionalUNet, NetworkConfig
from meddiffusion.io import load_image
from meddiffusion.sr.degradation import degrade, low_res_affine
from meddiffusion.sr.pipeline import UpscaleOptions, upscale
from meddiffusion.weights import PRETRAINED, save_weights

SHIPPED = (PRETRAINED / "sr-diffusion" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """An untrained network with the shipped layout: exercises the pipeline, not the quality."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    config = NetworkConfig(block_out_channels=[8, 8], norm_num_groups=4)
    save_weights(
        folder,
        ConditionalUNet(config),
        {
            "task": "sr",
            "method": "diffusion",
            "scales": [2, 4],
            "axes": ["inplane", "through"],
            "neighbours": 1,
            "residual_scale": 10.0,
            "schedule": {
                "num_train_timesteps": 1000,
                "beta_schedule": "squaredcos_cap_v2",
                "prediction_type": "sample",
            },
        },
    )
    return folder


def _edge_volume():
    volume = np.full((32, 32, 16), 10.0, np.float32)
    volume[:, 12:24, :] = 100.0  # a bright band whose rising edge is between voxels 11 and 12 along axis 1
    volume[:, :, 8:] += 20.0  # and an edge between slices 7 and 8 along axis 2
    return volume


def _crossing(profile: np.ndarray, lo: float, hi: float) -> float:
    """Fractional index where a rising profile first crosses the middle of lo and hi."""
    mid = (lo + hi) / 2
    i = int(np.argmax(profile >= mid))
    return i - 1 + (mid - profile[i - 1]) / (profile[i] - profile[i - 1])


@pytest.mark.parametrize(("axis", "method"), [("inplane", "bicubic"), ("through", "bicubic"), ("inplane", "diffusion")])
def test_upscale_returns_the_high_resolution_grid_with_aligned_content(axis, method, tiny_weights):
    high = _edge_volume()
    affine = np.array([[-0.9, 0, 0, 100], [0, 0.9, 0, -120], [0, 0, 1.2, -50], [0, 0, 0, 1]])
    low = degrade(high, 4 if axis == "inplane" else 2, axis)
    scale = 4 if axis == "inplane" else 2
    options = UpscaleOptions(
        scale=scale,
        axis=axis,
        method=method,
        steps=2,
        progress=False,
        weights=str(tiny_weights) if method == "diffusion" else None,
    )
    result = upscale(low, low_res_affine(affine, scale, axis), (1, 1, 1), options)
    assert result.volume.shape == high.shape
    assert np.allclose(result.affine, affine)
    # the edge lands where it was (half-way between voxels 11 and 12, or slices 7 and 8), within half a voxel;
    # a half-pixel convention error would move it by (scale - 1) / 2 voxels
    if axis == "inplane":
        assert abs(_crossing(result.volume[16, :16, 4], 10, 100) - 11.5) < 0.5
    else:
        assert abs(_crossing(result.volume[16, 4, :], 10, 30) - 7.5) < 0.5
    # data consistency (on by default): degrading the output gives the input back
    assert np.abs(degrade(result.volume, scale, axis) - low).max() < 1e-3 * np.abs(low).max()


def test_output_affine_keeps_the_world_extent(tmp_path):
    low = np.random.default_rng(0).random((16, 20, 8)).astype(np.float32) + 1
    affine = np.array([[0.0, 0, 3.0, -40], [-1.8, 0, 0, 60], [0, 2.0, 0, -30], [0, 0, 0, 1]])
    result = upscale(low, affine, (3.0, 1.8, 2.0), UpscaleOptions(scale=2, method="bicubic", progress=False))

    def corners(shape, aff):  # outer corners of the field of view (voxel edges, not centres)
        pts = np.array(
            [[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, shape[2] - 0.5)]
        )
        return (aff[:3, :3] @ pts.T).T + aff[:3, 3]

    # in-plane (k-space convention): voxel 0 keeps its centre and the field of view keeps its size, N x spacing
    assert np.allclose(result.affine[:3, 3], affine[:3, 3])
    fov_low = np.array(low.shape) * np.linalg.norm(affine[:3, :3], axis=0)
    fov_high = np.array(result.volume.shape) * np.linalg.norm(result.affine[:3, :3], axis=0)
    assert np.allclose(fov_low, fov_high)
    through = upscale(
        low, affine, (3.0, 1.8, 2.0), UpscaleOptions(scale=2, axis="through", method="bicubic", progress=False)
    )
    # through-plane: thick slabs and the thin slices inside them cover exactly the same extent
    assert np.allclose(
        np.sort(corners(through.volume.shape, through.affine), 0), np.sort(corners(low.shape, affine), 0)
    )


def test_cli_errors_for_2d_input_wrong_scale_and_foreign_weights(tmp_path, tiny_weights, capsys):
    flat = write_nifti(tmp_path / "flat.nii.gz", np.ones((16, 16), np.float32))
    assert main(["sr", "upscale", str(flat), str(tmp_path / "o.nii.gz"), "--method", "bicubic"]) == 2
    assert "2D" in capsys.readouterr().err
    tiny = write_nifti(tmp_path / "tiny.nii.gz", np.ones((3, 16, 16), np.float32))
    assert main(["sr", "upscale", str(tiny), str(tmp_path / "o.nii.gz"), "--method", "bicubic", "--scale", "2"]) == 2
    assert "does not fit" in capsys.readouterr().err
    config = json.loads((tiny_weights / "config.json").read_text())
    config["scales"] = [2]
    other = tmp_path / "scale2_weights"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes((tiny_weights / "model.safetensors").read_bytes())
    vol = write_nifti(tmp_path / "vol.nii.gz", np.ones((16, 16, 8), np.float32))
    assert main(["sr", "upscale", str(vol), str(tmp_path / "o.nii.gz"), "--scale", "4", "--weights", str(other)]) == 2
    assert "trained for scales [2]" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_sampler_with_a_fixed_seed_is_reproducible(tiny_weights):
    low = np.random.default_rng(1).random((8, 8, 4)).astype(np.float32)
    options = UpscaleOptions(scale=2, steps=3, samples=2, seed=7, weights=str(tiny_weights), progress=False)
    a = upscale(low, np.eye(4), (1, 1, 1), options)
    b = upscale(low, np.eye(4), (1, 1, 1), options)
    assert np.array_equal(a.volume, b.volume) and np.array_equal(a.std, b.std)
    assert a.std.max() > 0  # two different samples
    c = upscale(
        low,
        np.eye(4),
        (1, 1, 1),
        UpscaleOptions(scale=2, steps=3, samples=2, seed=8, weights=str(tiny_weights), progress=False),
    )
    assert not np.array_equal(a.volume, c.volume)


@pytest.mark.skipif(not SHIPPED, reason="shipped weights not present in this checkout")
def test_shipped_weights_upscale_a_real_volume_on_cpu(real_crop, tmp_path):
    image = load_image(real_crop["t2"])
    low = degrade(image.data[0].numpy(), 2, "inplane")
    lr_path = tmp_path / "t2_low.nii.gz"
    nib.save(nib.Nifti1Image(low, low_res_affine(image.affine, 2, "inplane")), lr_path)
    out = tmp_path / "t2_sr.nii.gz"
    assert main(["sr", "upscale", str(lr_path), str(out), "--scale", "2", "--steps", "2", "--samples", "2"]) == 0
    sr = nib.load(out)
    assert sr.shape == tuple(image.spatial_shape)
    assert np.allclose(sr.affine, image.affine, atol=1e-4)
    assert (tmp_path / "t2_sr_std.nii.gz").exists()
    record = json.loads((tmp_path / "t2_sr.json").read_text())
    assert len(record["weights_sha256"]) == 64 and record["options"]["samples"] == 2 and record["slice_axis"] == 2
    ref = image.data[0].numpy()
    assert np.mean((np.asarray(sr.dataobj) - ref) ** 2) < np.mean((np.repeat(np.repeat(low, 2, 0), 2, 1) - ref) ** 2)
