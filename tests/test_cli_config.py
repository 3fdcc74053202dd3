"""Config validation, `meddiff sr degrade` and `meddiff data split` from the command line."""

import json

import nibabel as nib
import numpy as np
import pytest

from meddiffusion.app.cli import _overrides, build_parser, main
from meddiffusion.errors import MeddiffError
from meddiffusion.sr.degradation import low_res_affine
from meddiffusion.sr.train import load_sr_config


def test_training_config_is_validated_with_the_file_named(tmp_path):
    good = tmp_path / "ok.yaml"
    good.write_text("method: unet\nnetwork: {diffusion: false}\ndata: {train: [a.nii.gz]}\n")
    with pytest.raises(MeddiffError, match=r"ok.yaml: data.train lists missing files"):
        load_sr_config(good)
    typo = tmp_path / "typo.yaml"
    typo.write_text("method: diffusion\ntrain: {stpes: 10}\ndata: {train: [a.nii.gz]}\n")
    with pytest.raises(MeddiffError, match=r"typo.yaml: unknown key\(s\) stpes"):
        load_sr_config(typo)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("method: diffusion\ntrain: {steps: many}\ndata: {train: [a.nii.gz]}\n")
    with pytest.raises(MeddiffError, match="steps = 'many' is not of type int"):
        load_sr_config(wrong)


def test_shipped_configs_load(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shared = root.parent / "shared" / "data"
    if not shared.exists():
        pytest.skip("../shared/data (training volumes) not present beside this checkout")
    benchmark = ("HG0015", "pat0006", "Brats18_2013_11_1", "Brats18_TCIA03_265_1")  # benchmarks/sr_benchmark.py
    for name in ("sr_diffusion.yaml", "sr_unet.yaml"):
        config = load_sr_config(root / "configs" / name)
        assert config.network.diffusion == (config.method == "diffusion")
        fitted = [*config.data.train, *config.data.inplane_only]
        assert not [p for p in fitted + config.data.val for case in benchmark if case in p]
        assert not set(fitted) & set(config.data.val)
    regression, diffusion = (load_sr_config(root / "configs" / f"sr_{m}.yaml").data for m in ("unet", "diffusion"))
    assert (len(regression.train), len(regression.inplane_only), len(regression.val)) == (20, 39, 5)
    assert (diffusion.train, diffusion.inplane_only, diffusion.val) == (
        regression.train,
        regression.inplane_only,
        regression.val,
    )
    assert Path(diffusion.prior).name == "sr-unet"  # residual diffusion over the regression model


def test_degrade_cli_writes_the_low_resolution_grid(real_crop, tmp_path):
    out = tmp_path / "low.nii.gz"
    assert main(["sr", "degrade", str(real_crop["t2"]), str(out), "--scale", "4", "--axis", "through"]) == 0
    high, low = nib.load(real_crop["t2"]), nib.load(out)
    assert low.shape == (64, 64, 8)
    assert np.allclose(low.affine, low_res_affine(high.affine, 4, "through"))
    assert np.allclose(np.asarray(low.dataobj)[..., 0], np.asarray(high.dataobj)[..., :4].mean(-1), atol=1e-3)
    assert json.loads((tmp_path / "low.json").read_text())["scale"] == 4
    assert main(["sr", "degrade", str(real_crop["t2"]), str(out), "--scale", "4"]) == 2  # exists, no --force


def test_data_split_cli(real_crop, tmp_path, capsys):
    import shutil

    for case in ("P1", "P2", "P3"):
        (tmp_path / case).mkdir()
        shutil.copy(real_crop["flair"], tmp_path / case / f"{case}_flair.nii.gz")
    assert main(["data", "split", str(tmp_path), "--folds", "3", "--seed", "1"]) == 0
    folds = json.loads(capsys.readouterr().out)["splits"]
    assert sorted(f["test"][0] for f in folds) == ["P1", "P2", "P3"]


def test_config_records_name_data_relative_to_themselves_and_package_files_by_package(tmp_path):
    from dataclasses import dataclass, field

    from meddiffusion.config import config_record, resolve_data_path

    @dataclass
    class Data:
        paths: list = field(default_factory=list)

    shipped = str(resolve_data_path("pkg:nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    record = config_record(Data([str(tmp_path / "data" / "a.nii.gz"), shipped]), tmp_path / "run")
    assert record["paths"] == [
        "../data/a.nii.gz",
        "pkg:nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["seg", "train"],
        ["seg", "ablate", "--data", "d.csv"],
        ["sr", "train", "--config", "c.yaml"],
        ["ssl", "pretrain"],
    ],
)
def test_every_trainer_takes_threads_as_a_config_override(argv):
    args = build_parser().parse_args([*argv, "--out", "run", "--threads", "1", "--steps", "7"])
    train = {key: value for key, value in _overrides(args).items() if key.startswith("train.")}
    assert train == {"train.threads": 1, "train.steps": 7}
