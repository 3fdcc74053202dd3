"""Defects a user hit (issue #13 §1), each checked through the command line as a user meets it."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import write_nifti
from meddiffusion.app.cli import main


def _truncate(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_a_truncated_nifti_is_one_line_exit_2_in_every_command(tmp_path, capsys, dtype):
    """TorchIO read a truncated integer .nii.gz as zero-filled data (exit 0); a float one gave a traceback."""
    rng = np.random.default_rng(0)
    full = write_nifti(tmp_path / "full.nii.gz", rng.integers(0, 3, (40, 40, 24)).astype(dtype))
    broken = _truncate(full, tmp_path / "broken.nii.gz")
    commands = [
        ["info", str(broken)],
        ["eval", "seg", "--pred", str(full), "--ref", str(broken), "--convention", "binary"],
        ["sr", "degrade", str(broken), str(tmp_path / "low.nii.gz"), "--scale", "2"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "broken.nii.gz" in err and "truncated or corrupt" in err
    assert not (tmp_path / "low.nii.gz").exists()


def test_label_values_outside_the_convention_are_named_everywhere(tmp_path, capsys, real_crop):
    """A 3 in a BraTS 2021 label: data check said nothing, eval seg dropped those voxels silently."""
    label = np.asarray(nib.load(real_crop["label"]).dataobj).astype(np.int16)
    label[label == 1] = 3
    affine = nib.load(real_crop["label"]).affine
    case = tmp_path / "data" / "C1"
    case.mkdir(parents=True)
    for m in ("flair", "t1", "t1ce", "t2"):
        (case / f"C1_{m}.nii.gz").write_bytes(Path(real_crop[m]).read_bytes())
    write_nifti(case / "C1_seg.nii.gz", label, affine)
    assert main(["data", "check", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert "C1_seg.nii.gz" in out and "label values [3]" in out
    assert main(["eval", "seg", "--pred", str(case / "C1_seg.nii.gz"), "--ref", str(case / "C1_seg.nii.gz")]) == 2
    assert "label values [3]" in capsys.readouterr().err


def test_eval_writes_valid_json_and_compare_skips_all_nan_columns(tmp_path, capsys):
    """``eval seg`` printed a bare NaN (invalid JSON); ``eval compare`` failed on an all-NaN column."""
    ref = np.zeros((20, 20, 20), np.int16)
    ref[5:10, 5:10, 5:10] = 2  # no enhancing tumour: ET HD95 is undefined
    write_nifti(tmp_path / "ref.nii.gz", ref)
    assert main(["eval", "seg", "--pred", str(tmp_path / "ref.nii.gz"), "--ref", str(tmp_path / "ref.nii.gz")]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and json.loads(text)["WT_dice"] == 1.0
    for name, shift in (("a", 0.0), ("b", 0.05)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case_id", "dice", "ET_hd95"])
            writer.writerows([[f"c{i}", 0.7 + shift + 0.01 * i, "nan"] for i in range(4)])
    assert main(["eval", "compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dice"]["mean_diff"] == pytest.approx(0.05)
    assert "skipped ET_hd95" in captured.err


def test_outputs_honour_the_umask(tmp_path, real_crop):
    old = os.umask(0o022)
    try:
        assert main(["sr", "degrade", str(real_crop["t1"]), str(tmp_path / "low.nii.gz"), "--scale", "2"]) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "low.nii.gz", tmp_path / "low.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_degrade_refuses_a_grid_the_scale_does_not_divide(tmp_path, capsys):
    """242 -> 240 in-plane was cropped silently, so the round trip to the original grid broke."""
    volume = write_nifti(tmp_path / "odd.nii.gz", np.ones((42, 40, 20), np.float32))
    assert main(["sr", "degrade", str(volume), str(tmp_path / "low.nii.gz"), "--scale", "4"]) == 2
    err = capsys.readouterr().err
    assert "axis 0 (42 voxels) must be a multiple of 4" in err and not (tmp_path / "low.nii.gz").exists()
    assert main(["sr", "degrade", str(volume), str(tmp_path / "low.nii.gz"), "--scale", "0"]) == 2
    assert "--scale must be an integer of 2 or more" in capsys.readouterr().err


def test_bad_flags_are_one_line_errors(tmp_path, capsys, real_crop):
    low = str(real_crop["t1"])
    for flags, message in (
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--device", "cuda"], "--device cuda"),
    ):
        argv = ["sr", "upscale", low, str(tmp_path / "up.nii.gz"), "--method", "bicubic", *flags]
        assert main(argv) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert not (tmp_path / "up.nii.gz").exists()


def test_a_closed_pipe_exits_quietly(real_crop):
    """``meddiff ... | head`` printed a BrokenPipeError traceback."""
    files = [str(real_crop["label"])] * 200
    script = "import sys; from meddiffusion.app.cli import main; sys.exit(main(sys.argv[1:]))"
    reader = subprocess.Popen(
        [sys.executable, "-c", script, "info", *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    reader.stdout.readline()
    reader.stdout.close()  # what ``head -1`` does
    code = reader.wait(timeout=300)
    stderr = reader.stderr.read().decode()
    assert code == 2 and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_a_sheared_affine_is_kept(tmp_path):
    """A sheared input affine came back orthogonalised: nibabel's qform cannot hold a shear, and ITK-based
    readers prefer the qform. The output is read back with the input's shear (scaled for the new grid)."""
    from meddiffusion.io import load_image

    affine = np.array([[1.0, 0.3, 0, -10], [0, 1.0, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((20, 20, 10)).astype(np.float32)
    write_nifti(tmp_path / "shear.nii.gz", data, affine)
    assert (
        main(["sr", "upscale", str(tmp_path / "shear.nii.gz"), str(tmp_path / "up.nii.gz"), "--method", "bicubic"]) == 0
    )
    expected = affine.copy()
    expected[:3, :2] /= 2  # 2x in-plane: the in-plane columns halve, the origin stays (README geometry)
    assert np.allclose(load_image(tmp_path / "up.nii.gz").affine, expected, atol=1e-5)
    assert np.allclose(nib.load(tmp_path / "up.nii.gz").affine, expected, atol=1e-5)


def test_finished_ablation_and_study_are_not_redone_without_force(tmp_path, capsys, real_crop):
    """``seg ablate`` and ``study`` rewrote their summaries on every run."""
    from meddiffusion.app.study import PRESETS, run_study
    from meddiffusion.errors import MeddiffError

    out = tmp_path / "ablate"
    for fold in (0, 1):  # a finished run of the floor, two folds
        (out / "floor" / f"fold{fold}").mkdir(parents=True)
        (out / "floor" / f"fold{fold}" / "metrics.json").write_text("[]")
    (out / "summary.md").write_text("earlier results\n")
    argv = ["seg", "ablate", "--data", str(tmp_path / "none.csv"), "--out", str(out), "--folds", "2"]
    assert main([*argv, "--variants", "floor"]) == 2 and "--force" in capsys.readouterr().err
    assert (out / "summary.md").read_text() == "earlier results\n"
    # another variant (or fold) into the same folder continues it: only the missing data file stops this one
    assert main([*argv, "--variants", "full", "--fold", "0"]) == 2
    assert "--force" not in (err := capsys.readouterr().err) and "none.csv" in err
    study = tmp_path / "study"
    study.mkdir()
    (study / "report.md").write_text("earlier report\n")
    with pytest.raises(MeddiffError, match="exists already"):
        run_study(tmp_path / "none.csv", tmp_path / "recipe.yaml", study, PRESETS["quick"])


def test_training_names_the_label_file_with_values_outside_its_convention(tmp_path, capsys, real_crop):
    label = np.asarray(nib.load(real_crop["label"]).dataobj).astype(np.int16)
    label[label == 1] = 3
    case = tmp_path / "data" / "C1"
    case.mkdir(parents=True)
    for m in ("flair", "t1", "t1ce", "t2"):
        (case / f"C1_{m}.nii.gz").write_bytes(Path(real_crop[m]).read_bytes())
    write_nifti(case / "C1_seg.nii.gz", label, nib.load(real_crop["label"]).affine)
    assert main(["seg", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "C1_seg.nii.gz" in err and "label values [3]" in err and "\n" not in err.strip()


def test_quick_answers_do_not_import_torch(tmp_path):
    """Every subcommand spent 10-12 s importing torch, diffusers and MONAI before it looked at its input."""
    script = (
        "import sys; from meddiffusion.app.cli import main; "
        f"code = main(['seg', 'predict', {str(tmp_path / 'missing')!r}, {str(tmp_path / 'o.nii.gz')!r}]); "
        "print(code, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr


def test_info_refuses_to_list_an_intensity_image_as_labels(real_crop, capsys):
    assert main(["info", "--label", str(real_crop["t1"])]) == 2
    assert "not a label map" in capsys.readouterr().err
