import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from conftest import write_nifti
from meddiffusion.app.cli import main
from meddiffusion.errors import MeddiffError
from meddiffusion.info import describe
from meddiffusion.io import load_image, load_subject, read_rows, save_image, save_nifti, write_json
from meddiffusion.weights import copy_weights, save_weights


def test_mha_and_nifti_read_with_world_geometry(case_paths, real_crop):
    mha = load_image(case_paths["t1"])
    assert tuple(mha.spatial_shape) == (160, 216, 176)
    assert mha.spacing == pytest.approx((1.0, 1.0, 1.0))
    # origin from the MetaImage header (LPS) becomes RAS in the affine: x and y flip sign
    assert mha.affine[:3, 3] == pytest.approx([76.994, 135.424, -90.2048], abs=1e-3)
    nii = load_image(real_crop["t1"])
    assert tuple(nii.spatial_shape) == (64, 64, 32)


def _world_centroid(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return (affine @ [*np.argwhere(data > 0).mean(0), 1])[:3]


def test_round_trip_resample_keeps_world_coordinates(real_crop, tmp_path):
    subject = load_subject({"t1": real_crop["t1"]}, real_crop["label"])
    resampled = tio.Resample((1.5, 1.5, 5.0))(subject)
    save_image(resampled["t1"], tmp_path / "t1.nii.gz")
    label_out = nib.load(save_image(resampled["label"], tmp_path / "label.nii.gz"))
    assert nib.load(tmp_path / "t1.nii.gz").header.get_zooms() == pytest.approx((1.5, 1.5, 5.0))
    assert nib.aff2axcodes(label_out.affine) == nib.aff2axcodes(subject["t1"].affine)
    # the tumour sits at the same world position before and after, within half a new voxel
    before = _world_centroid(subject["label"].data[0].numpy(), subject["label"].affine)
    after = _world_centroid(np.asarray(label_out.dataobj), label_out.affine)
    assert np.all(np.abs(after - before) <= np.array([0.75, 0.75, 2.5]))
    # a single voxel's world position: voxel (10, 20, 12) of the input is found where the new affine says
    marker = np.zeros(subject["t1"].spatial_shape, np.int16)
    marker[10:13, 20:23, 10:15] = 1
    marked = tio.Subject(m=tio.LabelMap(tensor=marker[None], affine=subject["t1"].affine))
    moved = tio.Resample((1.5, 1.5, 5.0))(marked)["m"]
    world = _world_centroid(marker, subject["t1"].affine)
    assert np.all(np.abs(_world_centroid(moved.data[0].numpy(), moved.affine) - world) <= [0.75, 0.75, 2.5])


def test_labels_stay_integer_through_resampling(real_crop, tmp_path):
    subject = load_subject({"t1": real_crop["t1"]}, real_crop["label"])
    before = set(np.unique(subject["label"].data.numpy()))
    resampled = tio.Resample((1.5, 1.5, 5.0))(subject)
    out = save_image(resampled["label"], tmp_path / "label.nii.gz")
    data = np.asarray(nib.load(out).dataobj)
    assert np.issubdtype(data.dtype, np.integer)
    assert set(np.unique(data)) <= before


def _bad_inputs(tmp_path):
    truncated = tmp_path / "truncated.nii.gz"
    good = write_nifti(tmp_path / "good.nii.gz", np.ones((8, 8, 8), np.float32))
    truncated.write_bytes(good.read_bytes()[:60])
    (tmp_path / "notes.nii.gz").write_text("not an image")
    write_nifti(tmp_path / "flat.nii.gz", np.ones((8, 8), np.float32))
    nan = np.ones((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", nan)
    singular = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), None)
    singular.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # nibabel refuses a singular qform
    nib.save(singular, tmp_path / "singular.nii.gz")
    return {
        "missing": (tmp_path / "missing.nii.gz", "not found"),
        "truncated": (truncated, "cannot be read"),
        "non-image": (tmp_path / "notes.nii.gz", "cannot be read"),
        "wrong suffix": (tmp_path / "table.csv", "not a NIfTI"),
        "2D": (tmp_path / "flat.nii.gz", "2D"),
        "NaN": (tmp_path / "nan.nii.gz", "NaN"),
        "singular affine": (tmp_path / "singular.nii.gz", "singular affine"),
    }


def test_each_bad_input_gets_a_clear_error_and_leaves_no_file(tmp_path, capsys):
    (tmp_path / "table.csv").write_text("a,b\n")
    for name, (path, message) in _bad_inputs(tmp_path).items():
        with pytest.raises(MeddiffError, match=message) as info:
            load_image(path)
        assert str(path) in str(info.value), name
        output = tmp_path / f"out_{path.name}.nii.gz"
        code = main(["sr", "upscale", str(path), str(output), "--method", "bicubic"])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("meddiff: error:") and "Traceback" not in err and err.count("\n") == 1, name
        assert not output.exists(), name
        assert not list(tmp_path.glob(f".out_{path.name}*")), name


def test_label_grid_differing_from_image_is_named(real_crop, tmp_path):
    label = nib.load(real_crop["label"])
    shifted = write_nifti(tmp_path / "label_other_grid.nii.gz", np.asarray(label.dataobj)[:, :, :30], label.affine)
    with pytest.raises(MeddiffError, match="label_other_grid.nii.gz.*differs"):
        load_subject({"t1": real_crop["t1"]}, shifted)


def test_non_integer_label_is_rejected(tmp_path):
    path = write_nifti(tmp_path / "soft.nii.gz", np.full((8, 8, 8), 0.5, np.float32))
    with pytest.raises(MeddiffError, match="non-integer"):
        load_image(path, label=True)


def test_outputs_are_not_overwritten_without_force(tmp_path):
    path = save_nifti(np.zeros((4, 4, 4)), np.eye(4), tmp_path / "x.nii.gz")
    before = path.read_bytes()
    with pytest.raises(MeddiffError, match="--force"):
        save_nifti(np.ones((4, 4, 4)), np.eye(4), path)
    assert path.read_bytes() == before
    save_nifti(np.ones((4, 4, 4)), np.eye(4), path, force=True)
    assert np.asarray(nib.load(path).dataobj).max() == 1


def test_info_agrees_with_nibabel(tmp_path, capsys):
    import nilearn.datasets

    path = nilearn.datasets.MNI152_FILE_PATH
    info = describe(path)
    ref = nib.load(path)
    assert info["shape"] == list(ref.shape)
    assert info["spacing_mm"] == pytest.approx([float(z) for z in ref.header.get_zooms()])
    assert np.allclose(info["affine"], ref.affine, atol=1e-5)
    assert main(["info", str(path)]) == 0
    assert "orientation: RAS" in capsys.readouterr().out


def test_info_lists_labels_with_volumes(case_paths):
    info = describe(case_paths["label"])
    assert info["kind"] == "label map"
    # voxel counts from the data set's README; 1 mm^3 voxels
    assert info["labels"][1] == {"voxels": 108706, "volume_ml": pytest.approx(108.706)}
    assert info["labels"][2]["voxels"] == 72310


def test_rows_read_back_from_json_carry_nan_where_they_were_written(tmp_path):
    """JSON has no NaN (written as null): rows of a finished fold read back with NaN, as freshly computed rows are,
    so summaries of a continued run work (a null once crashed the ablation summary)."""
    import math

    write_json([{"case_id": "a", "ET_hd95": float("nan"), "WT_dice": 0.5}], tmp_path / "m.json")
    assert "null" in (tmp_path / "m.json").read_text()
    (row,) = read_rows(tmp_path / "m.json")
    assert row["case_id"] == "a" and row["WT_dice"] == 0.5 and math.isnan(row["ET_hd95"])


def test_copied_weights_name_the_same_training_data_from_their_new_place(tmp_path):
    """Shipping a run's weights into the package: the relative data paths the records hold are re-based, so they
    still name the same files; other strings, the weights file and the no-overwrite rule are kept."""
    data = tmp_path / "shared" / "case_flair.nii.gz"
    data.parent.mkdir()
    data.write_bytes(b"image")
    source = tmp_path / "runs" / "seg" / "weights"
    recorded = os.path.relpath(data, source)
    training = {"data": [recorded], "model": "dualpath"}
    save_weights(source, torch.nn.Linear(2, 1), {"network": {}, "training": training, "prior": "prior"})
    # a weights folder inside the weights (residual diffusion's regression model) moves with them, its records too
    save_weights(source / "prior", torch.nn.Linear(2, 1), {"network": {}, "training": {"data": ["../" + recorded]}})
    target = tmp_path / "repo" / "pkg" / "pretrained" / "seg"
    copy_weights(source, target)
    config = json.loads((target / "config.json").read_text())
    assert config["training"]["data"][0] != recorded and (target / config["training"]["data"][0]).resolve() == data
    assert config["training"]["model"] == "dualpath" and config["prior"] == "prior" and (target / "prior").is_dir()
    inner = json.loads((target / "prior" / "config.json").read_text())["training"]["data"][0]
    assert (target / "prior" / inner).resolve() == data
    assert (target / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    with pytest.raises(MeddiffError, match="exists"):
        copy_weights(source, target)
    copy_weights(source, target, force=True)
    with pytest.raises(MeddiffError, match="not a weights folder"):
        copy_weights(tmp_path / "shared", tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists() and [p.name for p in target.parent.iterdir()] == ["seg"]
