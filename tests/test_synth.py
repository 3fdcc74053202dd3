"""Lesion synthesis: mask sizes, placement, inpainting that leaves the rest alone, data sets, commands."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import write_nifti
from meddiffusion.app.cli import main
from meddiffusion.app.study import StudyPreset, pool_small_lesions, run_study
from meddiffusion.data.check import check_dataset
from meddiffusion.data.labels import to_brats2021
from meddiffusion.data.layouts import read_dataset
from meddiffusion.data.prepare import load_case
from meddiffusion.diffusion import build_diffusion_network
from meddiffusion.errors import MeddiffError
from meddiffusion.io import load_image, load_subject
from meddiffusion.paths import weights_folder
from meddiffusion.segmentation.data import SegPatches
from meddiffusion.synth.cases import Distribution, Recipe, generate_cases
from meddiffusion.synth.masks import Template, ellipsoid_template, lesion_mask, white_matter
from meddiffusion.synth.pipeline import LesionRequest, LesionSynthesizer
from meddiffusion.synth.train import load_synth_config, run_training
from meddiffusion.transforms import brain_mask
from meddiffusion.weights import load_weights


@pytest.fixture(scope="module")
def brain_2mm(case_paths):
    """The embedded real brain at 2 mm (fast), and its real tumour as a shape template."""
    flair = load_image(case_paths["flair"]).data[0].numpy()
    label = load_image(case_paths["label"], label=True)
    template = Template.from_label(to_brats2021(label.data[0].numpy(), "brats2012"), label.spacing)
    existing = to_brats2021(label.data[0].numpy(), "brats2012")[::2, ::2, ::2] > 0
    return brain_mask(flair)[::2, ::2, ::2], (2.0, 2.0, 2.0), template.largest_component(), existing


@pytest.mark.parametrize(("volume", "foci"), [(0.5, 1), (5.0, 1), (20.0, 2), (60.0, 3)])
def test_lesion_volume_matches_the_request_within_5_percent_inside_the_brain(brain_2mm, volume, foci):
    brain, spacing, template, existing = brain_2mm
    label = lesion_mask(brain, spacing, volume, [template], np.random.default_rng(1), foci, avoid=existing)
    measured = (label > 0).sum() * 8 / 1000
    assert abs(measured - volume) / volume <= 0.05
    assert not (label[~brain] > 0).any() and not (label[existing] > 0).any()
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 4} and (label == 1).any()  # a core, not only oedema


def test_placement_keeps_off_a_given_tumour_and_away_from_the_brain_edge(brain_2mm):
    """The issue's lesion landed on the patient's own tumour: a region to avoid (a label or what a segmenter found)
    is never touched, with a margin, and focus centers sit at least 10 mm inside the brain."""
    from scipy import ndimage

    brain, spacing, template, existing = brain_2mm
    for seed in range(5):
        label = lesion_mask(brain, spacing, 3.0, [template], np.random.default_rng(seed), avoid=existing)
        assert not (label > 0)[ndimage.binary_dilation(existing, iterations=3)].any()
        depth = ndimage.distance_transform_edt(brain, sampling=spacing)
        center = np.round(np.argwhere(label > 0).mean(0)).astype(int)
        assert depth[tuple(center)] >= 10.0


def test_white_matter_is_the_bright_tissue_of_t1_and_the_dark_tissue_of_t2(case_paths):
    brain = brain_mask(load_image(case_paths["flair"]).data[0].numpy())
    t1 = load_image(case_paths["t1"]).data[0].numpy()
    wm = white_matter(t1, brain, "t1")
    assert 0.2 <= wm.sum() / brain.sum() <= 0.6 and not (wm & ~brain).any()
    assert t1[wm].mean() > t1[brain & ~wm].mean()
    t2 = load_image(case_paths["t2"]).data[0].numpy()
    wm_t2 = white_matter(t2, brain, "t2")
    assert t2[wm_t2].mean() < t2[brain & ~wm_t2].mean()
    assert (wm & wm_t2).sum() / wm.sum() > 0.5  # two contrasts, largely the same tissue


def test_focus_centers_go_where_placement_prefers(brain_2mm):
    brain, spacing, template, existing = brain_2mm
    prefer = np.zeros_like(brain)
    prefer[: brain.shape[0] // 2] = True  # one half of the brain
    inside = []
    for seed in range(6):
        label = lesion_mask(brain, spacing, 1.0, [template], np.random.default_rng(seed), avoid=existing, prefer=prefer)
        inside.append((label > 0)[prefer].sum() / (label > 0).sum())
    assert min(inside) > 0.6 and np.mean(inside) > 0.8


def test_same_seed_same_lesion_and_center_is_honoured(brain_2mm):
    brain, spacing, template, existing = brain_2mm
    center = tuple(int(c) for c in np.argwhere(brain & ~existing)[len(np.argwhere(brain & ~existing)) // 3])
    a = lesion_mask(brain, spacing, 2.0, [template], np.random.default_rng(5), center=center)
    b = lesion_mask(brain, spacing, 2.0, [template], np.random.default_rng(5), center=center)
    assert np.array_equal(a, b)
    coords = np.argwhere(a > 0).mean(0)
    assert np.linalg.norm((coords - center) * 2.0) < 10  # mm


def test_bad_requests_are_clear_errors(brain_2mm):
    brain, spacing, template, _ = brain_2mm
    rng = np.random.default_rng(0)
    with pytest.raises(MeddiffError, match="> 0 mL"):
        lesion_mask(brain, spacing, 0.0, [template], rng)
    with pytest.raises(MeddiffError, match="does not fit"):
        lesion_mask(brain, spacing, 5000.0, [template], rng)
    with pytest.raises(MeddiffError, match="outside the brain"):
        lesion_mask(brain, spacing, 1.0, [template], rng, center=(0, 0, 0))
    with pytest.raises(MeddiffError, match="3D"):
        lesion_mask(brain[:, :, 10], spacing, 1.0, [template], rng)


def test_ellipsoid_template_has_nested_regions():
    t = ellipsoid_template((1.0, 1.0, 1.0), 10.0)
    wt, tc, et = t.regions > 0.5
    assert wt.sum() > tc.sum() > et.sum() > 0 and not (tc & ~wt).any() and not (et & ~tc).any()


@pytest.fixture(scope="module")
def tiny_weights(real_crop, tmp_path_factory):
    """A synthesis model trained for a few steps on the real crop (tests the plumbing, not the quality)."""
    folder = tmp_path_factory.mktemp("synth")
    csv = folder / "cases.csv"
    csv.write_text(
        "case_id,flair,t1ce,label,convention\n"
        f"hg0015,{real_crop['flair']},{real_crop['t1ce']},{real_crop['label']},brats2012\n"
    )
    config = load_synth_config(
        None,
        {
            "data.data": str(csv),
            "data.patch_size": 32,
            "network.block_out_channels": [8, 16, 16, 16],
            "train.steps": 3,
            "train.batch_size": 2,
            "train.warmup_steps": 1,
            "train.threads": 1,
        },
    )
    return run_training(config, folder / "run"), csv


def test_inpainting_changes_only_the_dilated_lesion_and_is_reproducible(real_crop, tiny_weights):
    weights, _ = tiny_weights
    synthesizer = LesionSynthesizer.from_pretrained(weights)
    subject = load_subject({"flair": real_crop["flair"], "t1ce": real_crop["t1ce"]})
    request = LesionRequest(volume_ml=0.3, seed=3, steps=2)
    a = synthesizer.synthesize(subject, request)
    b = synthesizer.synthesize(subject, request)
    for m in ("flair", "t1ce"):
        original = subject[m].data[0].numpy()
        assert np.array_equal(a.images[m][~a.painted], original[~a.painted])
        assert not np.array_equal(a.images[m][a.painted], original[a.painted])
        assert np.array_equal(a.images[m], b.images[m])
    assert abs(a.info["measured_volume_ml"] - 0.3) / 0.3 <= 0.05
    assert np.array_equal(a.label > 0, a.lesion > 0)
    for m in ("flair", "t1ce"):  # painted values stay within the host image's own range
        original = subject[m].data[0].numpy()
        assert original.min() <= a.images[m].min() and a.images[m].max() <= original.max()
    assert a.info["clipped_to_host_range"] >= 0
    out = synthesizer(subject, request)  # the pipeline call: a Subject in, a Subject out, affines kept
    assert np.array_equal(out["flair"].data[0].numpy(), a.images["flair"])
    assert np.array_equal(out["label"].data[0].numpy(), a.label) and np.allclose(
        out["label"].affine, subject["flair"].affine
    )


def test_generated_folder_passes_data_check_and_feeds_the_segmentation_trainer(tiny_weights, tmp_path):
    weights, csv = tiny_weights
    recipe = Recipe(
        source=str(csv),
        volume_ml=Distribution(values=[0.2, 0.4]),
        foci=Distribution(values=[1]),
        weights=str(weights),
        steps=1,
    )
    out = tmp_path / "synthetic"
    assert len(generate_cases(recipe, 2, out)) == 2
    assert len(generate_cases(recipe, 2, out)) == 0  # resumes: nothing left to do
    n, problems = check_dataset(out)
    assert n == 2 and problems == []
    meta = json.loads((out / "metadata" / "synth_0001.json").read_text())
    assert {"requested_volume_ml", "measured_volume_ml", "weights_sha256", "source_sha256"} <= set(meta)
    subjects = [load_case(c, ["flair", "t1ce"], None) for c in read_dataset(out)]
    assert SegPatches(subjects, patch_size=32)[0]["image"].shape == (6, 32, 32)


def test_synth_lesion_command_writes_files_and_refuses_to_overwrite(real_crop, tiny_weights, tmp_path):
    weights, _ = tiny_weights
    args = [
        "synth",
        "lesion",
        "--flair",
        str(real_crop["flair"]),
        "--t1ce",
        str(real_crop["t1ce"]),
        "--volume-ml",
        "0.3",
        "--steps",
        "1",
        "--weights",
        str(weights),
        "--out-image",
        str(tmp_path / "case.nii.gz"),
        "--out-label",
        str(tmp_path / "seg.nii.gz"),
    ]
    assert main(args) == 0
    assert (tmp_path / "case_flair.nii.gz").exists() and (tmp_path / "case_t1ce.nii.gz").exists()
    assert json.loads((tmp_path / "seg.json").read_text())["requested_volume_ml"] == 0.3
    assert main(args) == 2  # exists already
    assert (
        main(
            [
                *args[:-4],
                "--volume-ml",
                "-1",
                "--out-image",
                str(tmp_path / "x.nii.gz"),
                "--out-label",
                str(tmp_path / "y.nii.gz"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "y.nii.gz").exists()


def test_shipped_model_uses_its_size_input(real_crop):
    folder = weights_folder("synth-inpaint")
    model, config = load_weights(folder, "synth", build_diffusion_network)
    # trained with modality dropout on all four: it paints any subset (one FLAIR, a FLAIR + T1c case, ...)
    assert config["modalities"] == config["optional_modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert (folder / "templates.npz").exists()
    torch.manual_seed(0)
    cond = torch.rand(1, model.config.cond_channels, 64, 64)
    x_t = torch.randn(1, model.config.target_channels, 64, 64)
    t = torch.tensor([500])
    with torch.no_grad():
        small = model(x_t, t, cond, torch.tensor([[np.log2(0.5)]]))
        large = model(x_t, t, cond, torch.tensor([[np.log2(80.0)]]))
    assert (small - large).abs().mean() > 1e-3


def test_quick_study_runs_end_to_end_on_a_tiny_real_subset(real_crop, tmp_path):
    rows = ["case_id,flair,t1ce,label,convention"]
    for k, flip in enumerate((None, 0, 1)):  # three distinct real-derived cases (mirrored crops)
        files = {}
        for name in ("flair", "t1ce", "label"):
            image = nib.load(real_crop[name])
            data = np.asarray(image.dataobj)
            data = data if flip is None else np.flip(data, flip).copy()
            files[name] = write_nifti(tmp_path / f"c{k}_{name}.nii.gz", data, image.affine)
        rows.append(f"case{k},{files['flair']},{files['t1ce']},{files['label']},brats2012")
    data = tmp_path / "cases.csv"
    data.write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("source: cases.csv\nvolume_ml: {values: [0.2]}\nfoci: {values: [1]}\n")
    preset = StudyPreset(folds=3, generator_steps=2, synthetic_cases=1, sampler_steps=1, seg_steps=2, seeds=1)
    tiny = {
        "synth.data.patch_size": 32,
        "synth.network.block_out_channels": [8, 16, 16, 16],
        "synth.train.batch_size": 2,
        "seg.data.patch_size": 32,
        "seg.data.modalities": ["flair", "t1ce"],
        "seg.network.channels": [8, 16, 32, 64],
        "seg.network.d_model": 16,
        "seg.train.batch_size": 2,
    }
    report = run_study(data, recipe, tmp_path / "study", preset, overrides=tiny)
    folds = json.loads((tmp_path / "study" / "split.json").read_text())["folds"]
    assert sorted(c for f in folds for c in f["test"]) == ["case0", "case1", "case2"]  # every case tested once
    for k, fold in enumerate(folds):
        assert not set(fold["test"]) & set(fold["train"])
        generator = json.loads((tmp_path / "study" / f"fold{k}" / "generator" / "weights" / "config.json").read_text())
        assert not set(fold["test"]) & set(generator["training"]["data"]["cases"])
        leak = json.loads((tmp_path / "study" / f"fold{k}" / "leak_check.json").read_text())
        assert leak["test_images_reached_generator"] is False
    text = report.read_text()
    assert "real+synthetic@0.3 − real" in text and "Lesion-wise detection by size" in text
    assert (tmp_path / "study" / "study_boxplot.png").exists()
    rows = (tmp_path / "study" / "per_case.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 2  # 3 patients x 2 arms x 1 seed


def test_lesion_inputs_as_users_have_them(real_crop, tiny_weights, tmp_path, capsys):
    """One image (modality from --modality or its name) is a case of that modality; one painted modality is written
    to exactly the named file; a modality the weights need and the input lacks is a one-line error."""
    from meddiffusion.app.lesion import lesion_case
    from meddiffusion.synth.cases import modality_outputs

    image = tmp_path / "scan.nii.gz"
    image.write_bytes(real_crop["flair"].read_bytes())
    assert lesion_case(str(image), {}, "flair").images == {"flair": image}
    named = tmp_path / "patient_FLAIR.nii.gz"
    named.write_bytes(real_crop["flair"].read_bytes())
    assert set(lesion_case(str(named), {}, None).images) == {"flair"}
    with pytest.raises(MeddiffError, match="--modality"):
        lesion_case(str(image), {}, None)
    assert modality_outputs(tmp_path / "o.nii.gz", ["flair"]) == {"flair": tmp_path / "o.nii.gz"}
    assert modality_outputs(tmp_path / "o.nii.gz", ["flair", "t1ce"])["t1ce"] == tmp_path / "o_t1ce.nii.gz"
    argv = ["synth", "lesion", str(image), "--modality", "flair", "--volume-ml", "2"]
    argv += ["--out-image", str(tmp_path / "o.nii.gz"), "--out-label", str(tmp_path / "l.nii.gz")]
    argv += ["--exclude-label", str(real_crop["label"]), "--weights", str(tiny_weights[0])]  # trained on FLAIR + T1c
    assert main(argv) == 2
    assert "need modality t1ce" in capsys.readouterr().err and not (tmp_path / "l.nii.gz").exists()


def test_modality_dropout_zeroes_a_modality_everywhere_and_never_keeps_an_absent_one(real_crop):
    """A dropped modality is zero in the target, in all three conditioning planes and in the loss weight; a
    modality the case lacks (zero-filled when read) is never kept; at least one modality always is."""
    from meddiffusion.synth.data import InpaintPairs

    csv_case = read_dataset(_two_modality_csv(real_crop, real_crop["flair"].parent))[0]
    subject = load_case(csv_case, ["flair", "t1", "t1ce"], None, optional=["t1"])  # t1 absent: zero-filled
    pairs = InpaintPairs([subject], patch_size=32, seed=0, modality_dropout=0.5)
    kept_counts = np.zeros(3)
    for i in range(40):
        item = pairs[i]
        kept = item["weight"].flatten(1).amax(1) > 0
        assert kept.any() and not kept[1]  # t1 (index 1) is absent from the case
        for k in range(3):
            planes = item["cond"][[k, 3 + k, 6 + k]]
            assert bool(kept[k]) == bool(item["target"][k].abs().max() > 0) == bool(planes.abs().max() > 0)
        kept_counts += kept.numpy()
    assert kept_counts[0] > 0 and kept_counts[2] > 0 and kept_counts[0] < 40  # both present ones drop sometimes


def _two_modality_csv(real_crop, folder):
    csv = folder / "flair_t1ce.csv"
    csv.write_text(
        "case_id,flair,t1ce,label,convention\n"
        f"hg0015,{real_crop['flair']},{real_crop['t1ce']},{real_crop['label']},brats2012\n"
    )
    return csv


def test_weights_trained_with_modality_dropout_paint_a_single_image_into_exactly_the_named_file(real_crop, tmp_path):
    csv = _two_modality_csv(real_crop, tmp_path)
    overrides = {
        "data.data": str(csv),
        "data.patch_size": 32,
        "data.modality_dropout": 0.5,
        "network.block_out_channels": [8, 16, 16, 16],
        "train.steps": 2,
        "train.batch_size": 2,
        "train.warmup_steps": 1,
        "train.threads": 1,
    }
    weights = run_training(load_synth_config(None, overrides), tmp_path / "run")
    assert json.loads((weights / "config.json").read_text())["optional_modalities"] == ["flair", "t1ce"]
    image = tmp_path / "scan.nii.gz"
    image.write_bytes(real_crop["flair"].read_bytes())
    out = tmp_path / "o.nii.gz"
    argv = ["synth", "lesion", str(image), "--modality", "flair", "--volume-ml", "0.3", "--steps", "2"]
    argv += ["--out-image", str(out), "--out-label", str(tmp_path / "l.nii.gz"), "--weights", str(weights)]
    argv += ["--exclude-label", str(real_crop["label"])]
    assert main(argv) == 0
    assert out.exists() and not list(tmp_path.glob("o_*.nii.gz"))
    record = json.loads((tmp_path / "o.json").read_text())
    assert record["modalities_painted"] == ["flair"]
    painted, original = np.asarray(nib.load(out).dataobj), np.asarray(nib.load(image).dataobj)
    assert (painted != original).any() and original.min() <= painted.min() and painted.max() <= original.max()
    with pytest.raises(MeddiffError, match="need modality"):
        LesionSynthesizer.from_pretrained(weights).check_modalities(["t2"])


def test_study_pools_the_lesions_under_10_ml_per_case():
    """The study's small-lesion question pools the bins under 10 mL: 1 of 2 tiny lesions and 1 of 1 mid-sized one
    detected is 2 of 3; a case with no lesion under 10 mL has no such sensitivity (NaN, left out of the pairs)."""
    row = {"lesion_sensitivity_<1mL": 0.5, "n_lesions_<1mL": 2.0, "lesion_sensitivity_1-10mL": 1.0}
    row |= {"n_lesions_1-10mL": 1.0, "lesion_sensitivity_>10mL": 0.0, "n_lesions_>10mL": 4.0}
    assert pool_small_lesions(row)["lesion_sensitivity_<10mL"] == pytest.approx(2 / 3)
    assert pool_small_lesions(row)["n_lesions_<10mL"] == 3.0
    large_only = {"lesion_sensitivity_<1mL": float("nan"), "n_lesions_<1mL": 0.0, "n_lesions_1-10mL": 0.0}
    large_only |= {"lesion_sensitivity_1-10mL": float("nan"), "lesion_sensitivity_>10mL": 1.0, "n_lesions_>10mL": 1.0}
    assert np.isnan(pool_small_lesions(large_only)["lesion_sensitivity_<10mL"])
