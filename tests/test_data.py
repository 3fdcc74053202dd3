"""Data-set layouts, patient-level splits, `meddiff data check`, and the augmentation presets."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from conftest import write_nifti
from meddiffusion.app.cli import main
from meddiffusion.data import detect_layout, kfold_splits, read_dataset, train_test_split
from meddiffusion.data.check import check_dataset
from meddiffusion.data.labels import to_brats2021
from meddiffusion.transforms import augmentation


def _brats2021(root, real_crop, cases=("BraTS2021_00001", "BraTS2021_00002")):
    for case in cases:
        (root / case).mkdir(parents=True)
        for name in ("t1", "t1ce", "t2", "flair"):
            shutil.copy(real_crop[name], root / case / f"{case}_{name}.nii.gz")
        shutil.copy(real_crop["label"], root / case / f"{case}_seg.nii.gz")
    return root


def test_brats2021_layout(real_crop, tmp_path):
    root = _brats2021(tmp_path / "b21", real_crop)
    assert detect_layout(root) == "brats2021"
    cases = read_dataset(root)
    assert [c.case_id for c in cases] == ["BraTS2021_00001", "BraTS2021_00002"]
    subject = cases[0].load(("flair", "t1ce"))
    assert set(subject.keys()) >= {"flair", "t1ce", "label"}
    assert subject["label"].data.dtype == torch.int16


def test_brats2023_layout_maps_modality_names(real_crop, tmp_path):
    case = "BraTS-GLI-00005-000"
    (tmp_path / case).mkdir()
    for src, dst in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f"), ("label", "seg")):
        shutil.copy(real_crop[src], tmp_path / case / f"{case}-{dst}.nii.gz")
    assert detect_layout(tmp_path) == "brats2023"
    (only,) = read_dataset(tmp_path)
    assert set(only.images) == {"t1", "t1ce", "t2", "flair"} and only.label is not None and not only.missing


def test_nnunet_layout(real_crop, tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "FLAIR", "1": "T1ce"},
                "labels": {"background": 0, "tumour": 1},
                "numTraining": 1,
                "file_ending": ".nii.gz",
            }
        )
    )
    shutil.copy(real_crop["flair"], tmp_path / "imagesTr" / "case_001_0000.nii.gz")
    shutil.copy(real_crop["t1ce"], tmp_path / "imagesTr" / "case_001_0001.nii.gz")
    shutil.copy(real_crop["label"], tmp_path / "labelsTr" / "case_001.nii.gz")
    (case,) = read_dataset(tmp_path)
    assert detect_layout(tmp_path) == "nnunet"
    assert set(case.images) == {"flair", "t1ce"} and case.label.name == "case_001.nii.gz"


def test_file_list_layout(real_crop, tmp_path):
    listing = tmp_path / "cases.csv"
    listing.write_text(f"case_id,flair,label\npatA,{real_crop['flair']},{real_crop['label']}\n")
    (case,) = read_dataset(listing)
    assert case.case_id == "patA" and case.images["flair"] == real_crop["flair"]


def test_splits_keep_each_patient_on_one_side():
    ids = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(10) for t in range(2)]
    train, test = train_test_split(ids, 0.3, seed=3)
    patients = lambda xs: {x.rsplit("-", 1)[0] for x in xs}  # noqa: E731
    assert not patients(train) & patients(test) and len(patients(test)) == 3
    assert train_test_split(ids, 0.3, seed=3) == (train, test)
    folds = kfold_splits(ids, 5, seed=0)
    assert sorted(x for _, te in folds for x in te) == sorted(ids)
    assert all(not patients(tr) & patients(te) for tr, te in folds)


def test_data_check_reports_every_problem(real_crop, tmp_path, capsys):
    root = _brats2021(tmp_path / "ds", real_crop, ("A", "B", "C", "D"))
    (root / "A" / "A_t2.nii.gz").unlink()
    label = nib.load(real_crop["label"])
    write_nifti(root / "B" / "B_seg.nii.gz", np.asarray(label.dataobj)[:, :, :20], label.affine)
    nan = np.asarray(nib.load(real_crop["t1"]).dataobj).copy()
    nan[0, 0, 0] = np.nan
    write_nifti(root / "C" / "C_t1.nii.gz", nan, label.affine)
    write_nifti(root / "D" / "D_seg.nii.gz", np.zeros(label.shape, np.int16), label.affine)
    n, problems = check_dataset(root)
    assert n == 4 and len(problems) == 4
    assert any("A: missing modality t2" in p for p in problems)
    assert any(p.startswith("B:") and "differs" in p for p in problems)
    assert any(p.startswith("C:") and "NaN" in p for p in problems)
    assert any(p.startswith("D:") and "empty" in p for p in problems)
    assert main(["data", "check", str(root)]) == 1
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    clean = _brats2021(tmp_path / "clean", real_crop)
    assert main(["data", "check", str(clean)]) == 0


def test_label_conventions_map_to_brats2021():
    assert to_brats2021(np.array([0, 1, 2, 3, 4]), "brats2015").tolist() == [0, 1, 2, 1, 4]
    assert to_brats2021(np.array([0, 1, 2]), "brats2012").tolist() == [0, 2, 1]
    assert to_brats2021(np.array([0, 1, 2, 3]), "brats2023").tolist() == [0, 1, 2, 4]


def test_augmentation_parameters_stay_in_the_proposal_ranges(real_crop):
    subject = tio.Subject(t1=tio.ScalarImage(real_crop["t1"]))
    subject = tio.RescaleIntensity(out_min_max=(0, 1))(subject)
    torch.manual_seed(0)
    gammas, noise, angles, rotated = [], [], [], 0
    for _ in range(40):
        out = augmentation()(subject)
        for transform in out.get_applied_transforms():
            name = type(transform).__name__
            if name == "Gamma":
                gammas.extend(np.ravel(transform.gamma["t1"]).tolist())
            elif name == "Noise":
                noise.append(float(transform.noise_std["t1"]))
            elif name == "Affine":
                rotated += 1
                angles.extend(np.abs(transform.degrees).tolist())
    assert gammas and min(gammas) >= 0.8 - 1e-6 and max(gammas) <= 1.2 + 1e-6
    assert noise and max(noise) <= 0.01
    assert angles and max(angles) <= 15.0
    assert 8 <= rotated <= 32  # p = 0.5 over 40 draws


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_patch_sampling_along_any_axis_is_foreground_weighted(real_crop, axis):
    from meddiffusion.data.sampling import PatchSampler
    from meddiffusion.io import load_image

    label = load_image(real_crop["label"], label=True).data[0].movedim(axis, 0) > 0  # planes normal to ``axis``
    always, never = PatchSampler(label, 24, foreground_p=1.0), PatchSampler(label, 24, foreground_p=0.0)

    def draws(sampler, seed):
        rng = np.random.default_rng(seed)
        return [sampler(rng) for _ in range(30)]

    assert draws(always, 3) == draws(always, 3)  # a pure function of the generator
    for plane, window in draws(always, 0):
        assert label[plane][window].any() and all(w.stop - w.start == 24 for w in window)
    fg_always = np.mean([label[p][w].float().mean() for p, w in draws(always, 1)])
    fg_never = np.mean([label[p][w].float().mean() for p, w in draws(never, 1)])
    assert fg_always > fg_never
