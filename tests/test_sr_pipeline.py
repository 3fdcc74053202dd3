"""Whole-volume super-resolution: geometry, alignment, errors, and the shipped weights."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import write_nifti
from meddiffusion.app.cli import main
from meddiffusion.diffusion import ConditionalUNet, NetworkConfig
from meddiffusion.io import load_image
from meddiffusion.paths import PRETRAINED
from meddiffusion.sr import DEFAULT_METHOD as SR_DEFAULT_METHOD
from meddiffusion.sr.degradation import degrade, low_res_affine
from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions, normalised_input
from meddiffusion.transforms import PERCENTILES, denormalise, signal_mask
from meddiffusion.weights import save_weights

SHIPPED = (PRETRAINED / "sr-diffusion" / "model.safetensors").is_file()


@pytest.mark.parametrize("zscored", [False, True])
def test_normalisation_round_trips_real_intensities_exactly(real_crop, zscored):
    """What the networks see maps back to the input's own scale: the head's robust percentiles go to 0 and 1, and
    denormalising plus the shift gives the input back (raw scanner values, and z-scored sets with a negative
    background)."""
    for name in ("flair", "t1ce", "t2"):
        volume = load_image(real_crop[name]).data[0].numpy().astype(np.float32)
        if zscored:
            volume = (volume - volume.mean()) / volume.std()
        low, intensity, shift = normalised_input(volume)
        assert shift == min(float(volume.min()), 0.0)
        head = low[signal_mask(volume - shift)]
        assert np.allclose(np.percentile(head, PERCENTILES), [0.0, 1.0], atol=1e-5)
        back = denormalise(low, intensity) + shift
        assert np.allclose(back, volume, rtol=0, atol=1e-5 * float(np.abs(volume).max()))


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
            "network": config.to_dict(),
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
    volume = np.full((32, 32, 32), 10.0, np.float32)
    volume[:, 12:24, :] = 100.0  # a bright band whose rising edge is between voxels 11 and 12 along axis 1
    volume[:, :, 16:] += 20.0  # and an edge between slices 15 and 16 along axis 2
    return volume


def _pipeline(method: str, weights) -> SRPipeline:
    """Interpolation, or the network path with an output layer of zeros (a zero residual): its geometry must then
    be the interpolation's exactly, whatever the planes, batches and tiles it runs through."""
    if method != "diffusion":
        return SRPipeline.interpolation()
    pipeline = SRPipeline.from_pretrained(weights)
    with torch.no_grad():
        for name, parameter in pipeline.model.named_parameters():
            if "conv_out" in name:
                parameter.zero_()
    return pipeline


def _crossing(profile: np.ndarray, lo: float, hi: float) -> float:
    """Fractional index where a rising profile first crosses the middle of lo and hi."""
    mid = (lo + hi) / 2
    i = int(np.argmax(profile >= mid))
    return i - 1 + (mid - profile[i - 1]) / (profile[i] - profile[i - 1])


@pytest.mark.parametrize(("axis", "method"), [("inplane", "bicubic"), ("through", "bicubic"), ("inplane", "diffusion")])
def test_upscale_returns_the_high_resolution_grid_with_aligned_content(axis, method, tiny_weights):
    """4x, with data consistency off for the edge position: the projection onto the measured data pulls a shifted
    edge back, so with it on a half-voxel error of the interpolation grid went unnoticed."""
    high = _edge_volume()
    affine = np.array([[-0.9, 0, 0, 100], [0, 0.9, 0, -120], [0, 0, 1.2, -50], [0, 0, 0, 1]])
    scale = 4
    low = degrade(high, scale, axis)
    pipeline = _pipeline(method, tiny_weights)
    options = {"scale": scale, "axis": axis, "steps": 2, "progress": False}
    free = pipeline.upscale(
        low, low_res_affine(affine, scale, axis), (1, 1, 1), UpscaleOptions(**options, data_consistency=False)
    )
    assert free.volume.shape == high.shape
    assert np.allclose(free.affine, affine)
    # the edge lands where it was (half-way between voxels 11 and 12, or slices 15 and 16), within a quarter of a
    # voxel; a half-pixel convention error on the low-resolution grid moves it by (scale - 1) / 2 = 1.5 voxels,
    # one of half a high-resolution voxel by 0.5
    if axis == "inplane":
        assert abs(_crossing(free.volume[16, :16, 4], 10, 100) - 11.5) < 0.25
    else:
        assert abs(_crossing(free.volume[16, 4, :], 10, 30) - 15.5) < 0.25
    # data consistency (on by default): degrading the output gives the input back (to the reported error, under
    # 1 % of the range), and no value falls below the input's floor (the plain projection rang to negative values)
    result = pipeline.upscale(low, low_res_affine(affine, scale, axis), (1, 1, 1), UpscaleOptions(**options))
    error = np.abs(degrade(result.volume, scale, axis) - low).max() / (low.max() - low.min())
    assert error == pytest.approx(result.info["data_consistency_error"], abs=1e-5) and error < 0.01
    assert result.volume.min() >= low.min()


def test_output_affine_keeps_the_world_extent(tmp_path):
    low = np.random.default_rng(0).random((16, 20, 8)).astype(np.float32) + 1
    affine = np.array([[0.0, 0, 3.0, -40], [-1.8, 0, 0, 60], [0, 2.0, 0, -30], [0, 0, 0, 1]])
    bicubic = SRPipeline.interpolation()
    result = bicubic.upscale(low, affine, (3.0, 1.8, 2.0), UpscaleOptions(scale=2, progress=False))

    def corners(shape, aff):  # outer corners of the field of view (voxel edges, not centers)
        pts = np.array(
            [[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, shape[2] - 0.5)]
        )
        return (aff[:3, :3] @ pts.T).T + aff[:3, 3]

    # in-plane (k-space convention): voxel 0 keeps its center and the field of view keeps its size, N x spacing
    assert np.allclose(result.affine[:3, 3], affine[:3, 3])
    fov_low = np.array(low.shape) * np.linalg.norm(affine[:3, :3], axis=0)
    fov_high = np.array(result.volume.shape) * np.linalg.norm(result.affine[:3, :3], axis=0)
    assert np.allclose(fov_low, fov_high)
    through = bicubic.upscale(low, affine, (3.0, 1.8, 2.0), UpscaleOptions(scale=2, axis="through", progress=False))
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
    command = ["sr", "upscale", str(vol), str(tmp_path / "o.nii.gz"), "--weights", str(other)]
    assert main([*command, "--scale", "4"]) == 2  # with no --method, the weights' own (diffusion)
    assert "trained for scales [2]" in capsys.readouterr().err
    assert main([*command, "--scale", "2", "--method", "unet"]) == 2
    assert "for method 'diffusion', not 'unet'" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_sampler_with_a_fixed_seed_is_reproducible(tiny_weights):
    low = np.random.default_rng(1).random((8, 8, 4)).astype(np.float32)
    pipeline = SRPipeline.from_pretrained(tiny_weights)
    options = UpscaleOptions(scale=2, steps=3, samples=2, seed=7, progress=False)
    a = pipeline.upscale(low, np.eye(4), (1, 1, 1), options)
    b = pipeline.upscale(low, np.eye(4), (1, 1, 1), options)
    assert np.array_equal(a.volume, b.volume) and np.array_equal(a.std, b.std)
    assert a.std.max() > 0  # two different samples
    c = pipeline.upscale(low, np.eye(4), (1, 1, 1), UpscaleOptions(scale=2, steps=3, samples=2, seed=8, progress=False))
    assert not np.array_equal(a.volume, c.volume)


def test_pipeline_takes_and_returns_a_subject_with_its_affine(real_crop, tiny_weights):
    """TorchIO in and out: every image upscaled on its high-resolution grid, the label carried onto it."""
    import torchio as tio

    image = load_image(real_crop["t2"])
    low = degrade(image.data[0].numpy(), 2, "inplane")
    low_affine = low_res_affine(image.affine, 2, "inplane")
    label = load_image(real_crop["label"], label=True).data[0, ::2, ::2].clone()
    subject = tio.Subject(
        t2=tio.ScalarImage(tensor=torch.from_numpy(low)[None], affine=low_affine),
        label=tio.LabelMap(tensor=label[None], affine=low_affine),
    )
    out = SRPipeline.from_pretrained(tiny_weights)(subject, scale=2, samples=2, progress=False)
    assert out["t2"].spatial_shape == image.spatial_shape and np.allclose(out["t2"].affine, image.affine, atol=1e-5)
    assert out["t2_std"].spatial_shape == image.spatial_shape
    assert out["label"].spatial_shape == image.spatial_shape and np.allclose(out["label"].affine, image.affine)
    assert out["info"]["method"] == "diffusion" and len(out["info"]["weights_sha256"]) == 64


@pytest.mark.skipif(not SHIPPED, reason="shipped weights not present in this checkout")
def test_shipped_weights_upscale_a_real_volume_on_cpu(real_crop, tmp_path):
    image = load_image(real_crop["t2"])
    low = degrade(image.data[0].numpy(), 2, "inplane")
    lr_path = tmp_path / "t2_low.nii.gz"
    nib.save(nib.Nifti1Image(low, low_res_affine(image.affine, 2, "inplane")), lr_path)
    out = tmp_path / "t2_sr.nii.gz"
    command = ["sr", "upscale", str(lr_path), str(out), "--scale", "2", "--method", "diffusion"]
    assert main([*command, "--steps", "2", "--samples", "2"]) == 0
    sr = nib.load(out)
    assert sr.shape == tuple(image.spatial_shape)
    assert np.allclose(sr.affine, image.affine, atol=1e-4)
    assert (tmp_path / "t2_sr_std.nii.gz").exists()
    std_record = json.loads((tmp_path / "t2_sr_std.json").read_text())  # the uncertainty map has its own record
    assert std_record["of"] == str(out) and "standard deviation" in std_record["content"]
    record = json.loads((tmp_path / "t2_sr.json").read_text())
    assert len(record["weights_sha256"]) == 64 and record["options"]["samples"] == 2 and record["slice_axis"] == 2
    # the default method with the shipped weights beats bicubic interpolation with data consistency on this
    # held-out real slab; a network that outputs zeros gives exactly the bicubic result (a zero residual) and fails
    ref = image.data[0].numpy()
    errors = {}
    for method, extra in (("bicubic", ["--method", "bicubic"]), ("default", [])):
        path = tmp_path / f"{method}.nii.gz"
        assert main(["sr", "upscale", str(lr_path), str(path), "--scale", "2", *extra]) == 0
        errors[method] = np.mean((np.asarray(nib.load(path).dataobj) - ref) ** 2)
    assert json.loads((tmp_path / "default.json").read_text())["method"] == SR_DEFAULT_METHOD
    assert errors["default"] < 0.95 * errors["bicubic"]


def _sr_weights(folder, method: str, cond_channels: int, seed: int, prior=None):
    torch.manual_seed(seed)
    config = NetworkConfig(block_out_channels=[8, 8], norm_num_groups=4, cond_channels=cond_channels)
    config.diffusion = method == "diffusion"
    model = ConditionalUNet(config)
    extra = {
        "task": "sr",
        "method": method,
        "scales": [2, 4],
        "axes": ["inplane", "through"],
        "neighbours": 1,
        "residual_scale": 10.0,
        "schedule": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"},
    }
    if prior is not None:
        import shutil

        shutil.copytree(prior, folder / "prior")
        extra["prior"] = "prior"
    return save_weights(folder, model, {"network": config.to_dict(), **extra}), model


@pytest.mark.parametrize("axis", ["inplane", "through"])
def test_residual_diffusion_with_a_zero_residual_is_the_regression_output(tmp_path, real_crop, axis):
    """Residual diffusion refines the regression: with its output layer at zero it returns the regression's
    prediction exactly; the folder carries the regression model it refines."""
    regression, _ = _sr_weights(tmp_path / "unet", "unet", 3, seed=1)
    residual, model = _sr_weights(tmp_path / "residual", "diffusion", 4, seed=2, prior=regression)
    high = load_image(real_crop["t1ce"]).data[0].numpy()
    low = degrade(high, 2, axis)
    options = UpscaleOptions(scale=2, axis=axis, steps=3, samples=2, data_consistency=False, progress=False)
    pipeline = SRPipeline.from_pretrained(residual)
    assert pipeline.prior is not None and pipeline.prior.method == "unet"
    expected = SRPipeline.from_pretrained(regression).upscale(low, np.eye(4), (1, 1, 1), options).volume
    with torch.no_grad():
        for name, parameter in pipeline.model.named_parameters():
            if "conv_out" in name:
                parameter.zero_()
    result = pipeline.upscale(low, np.eye(4), (1, 1, 1), options)
    assert np.allclose(result.volume, expected, atol=1e-4) and np.allclose(result.std, 0, atol=1e-5)
    assert len(result.info["prior_weights_sha256"]) == 64
    untouched = SRPipeline.from_pretrained(residual).upscale(low, np.eye(4), (1, 1, 1), options)
    assert not np.allclose(untouched.volume, expected, atol=1e-3)  # a non-zero residual does change it


def test_sr_train_fits_residual_diffusion_over_a_regression_model_end_to_end(tmp_path, real_crop):
    """`meddiff sr train` with a `data.prior`: pairs over a few planes' regression prediction, a few steps, a weights
    folder that carries the regression model and upscales a volume through it."""
    regression, _ = _sr_weights(tmp_path / "unet", "unet", 3, seed=1)
    config = tmp_path / "residual.yaml"
    config.write_text(
        "method: diffusion\n"
        "network: {cond_channels: 4, block_out_channels: [8, 8], norm_num_groups: 4}\n"
        f"data: {{train: [{real_crop['t1ce']}], prior: unet, prior_planes: 3, patch_size: 32, scales: [2]}}\n"
        "train: {steps: 4, batch_size: 2, checkpoint_every: 2, log_every: 2, validate_every: 100, threads: 1}\n"
    )
    assert main(["sr", "train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    caches = list((tmp_path / "run" / "prior_cache").glob("*.npy"))
    assert len(caches) == 3 and all(np.load(c).shape[0] == 3 for c in caches)  # in-plane 1 family, through 2
    pipeline = SRPipeline.from_pretrained(tmp_path / "run" / "weights")
    assert pipeline.prior is not None and pipeline.prior.hash == SRPipeline.from_pretrained(regression).hash
    low = degrade(load_image(real_crop["t1ce"]).data[0].numpy(), 2, "through")
    options = UpscaleOptions(scale=2, axis="through", steps=2, progress=False)
    assert pipeline.upscale(low, np.eye(4), (1, 1, 2), options).volume.shape == (64, 64, 32)
