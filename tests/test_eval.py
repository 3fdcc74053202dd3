"""Every metric against a known answer: analytic shapes, scikit-image / MONAI on real slices, BraTS empty rules."""

import json

import nibabel as nib
import numpy as np
import pytest
from monai.metrics import compute_dice
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import write_nifti
from meddiffusion.app.cli import main
from meddiffusion.data.labels import to_brats2021
from meddiffusion.data.layouts import CaseFiles
from meddiffusion.errors import MeddiffError
from meddiffusion.eval.cases import score_case
from meddiffusion.eval.image import (
    LpipsUnavailable,
    gradient_energy_ratio,
    hfen,
    lpips_distance,
    nrmse,
    psnr,
    ssim,
    uncertainty_error_correlation,
)
from meddiffusion.eval.report import compare_csv, evaluate_folders
from meddiffusion.eval.segmentation import EMPTY_HD95, binary_metrics, evaluate_segmentation, lesion_detection
from meddiffusion.eval.stats import paired_comparison
from meddiffusion.eval.synthesis import intensity_distance, nearest_training_distance, size_fidelity
from meddiffusion.io import load_image


def sphere(shape, center, radius, spacing=(1, 1, 1)):
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing, strict=True))
    return d2 <= radius**2


@pytest.fixture(scope="module")
def real_slices(case_paths):
    t1 = load_image(case_paths["t1"]).data[0].numpy().astype(np.float64)
    ref = t1[:, :, 90]
    noisy = ref + np.random.default_rng(0).normal(0, 20, ref.shape)
    return ref, noisy, float(ref.max() - ref.min())


def test_psnr_ssim_nrmse_match_scikit_image_on_real_slices(real_slices):
    ref, noisy, rng = real_slices
    assert psnr(noisy, ref, rng) == pytest.approx(peak_signal_noise_ratio(ref, noisy, data_range=rng))
    assert ssim(noisy, ref, rng) == pytest.approx(structural_similarity(ref, noisy, data_range=rng))
    assert nrmse(noisy, ref) == pytest.approx(np.linalg.norm(ref - noisy) / np.linalg.norm(ref))


def test_psnr_known_answers_and_identity():
    ref = np.zeros((4, 4, 4))
    assert psnr(ref + 0.1, ref, data_range=1.0) == pytest.approx(20.0)
    assert psnr(ref, ref, 1.0) == float("inf")
    mask = np.zeros_like(ref, bool)
    mask[0] = True
    pred = ref.copy()
    pred[1:] = 5.0  # errors outside the mask do not count
    assert psnr(pred, ref, 1.0, mask) == float("inf")


def test_hfen_is_zero_for_identity_and_ignores_constant_offsets(real_slices):
    ref, noisy, _ = real_slices
    assert hfen(ref, ref) == 0.0
    assert hfen(ref + 50.0, ref) < 1e-2  # LoG removes a constant (up to its truncated kernel)
    assert hfen(noisy, ref) > 0.1


def test_gradient_energy_ratio_says_smoother_or_noisier_than_the_reference(real_slices):
    from scipy import ndimage

    ref = real_slices[0]
    mask = ref > ref.mean()
    assert gradient_energy_ratio(ref, ref, mask) == 1.0
    assert gradient_energy_ratio(ref + 100.0, ref, mask) == pytest.approx(1.0)  # an offset has no gradient
    assert gradient_energy_ratio(2 * ref, ref, mask) == pytest.approx(4.0)
    assert gradient_energy_ratio(ndimage.gaussian_filter(ref, 1.5), ref, mask) < 0.6  # a regression-like blur
    noisy = ref + np.random.default_rng(0).normal(0, ref.std() / 4, ref.shape)
    assert gradient_energy_ratio(noisy, ref, mask) > 1.5


def test_uncertainty_that_marks_the_errors_correlates_with_them(real_slices):
    ref = real_slices[0]
    mask = ref > ref.mean()
    error = np.random.default_rng(0).normal(0, 1, ref.shape) * np.linspace(0, 50, ref.shape[1])[None, :]
    pred = ref + error
    assert uncertainty_error_correlation(np.abs(error), pred, ref, mask) == pytest.approx(1.0)
    unrelated = np.random.default_rng(1).random(ref.shape)
    assert abs(uncertainty_error_correlation(unrelated, pred, ref, mask)) < 0.05


def test_lpips_is_reported_unavailable_rather_than_invented(real_slices):
    ref, noisy, rng = real_slices
    try:
        import lpips  # noqa: F401
    except Exception as exc:  # torchvision missing or broken beside the CPU torch
        with pytest.raises(LpipsUnavailable, match="LPIPS unavailable"):
            lpips_distance(noisy[..., None], ref[..., None], rng)
        pytest.skip(f"lpips extra not usable here ({type(exc).__name__}); checked that LPIPS reports why")
    assert lpips_distance(noisy[..., None], ref[..., None], rng) > 0


def test_dice_of_two_overlapping_spheres_is_analytic():
    r, d = 10.0, 10.0  # two spheres of radius r, centers d apart
    a = sphere((48, 48, 48), (24, 24, 19), r)
    b = sphere((48, 48, 48), (24, 24, 29), r)
    lens = np.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    expected = 2 * lens / (2 * 4 / 3 * np.pi * r**3)
    got = binary_metrics(a, b, (1, 1, 1))["dice"]
    assert got == pytest.approx(expected, abs=0.02)
    import torch

    monai = float(compute_dice(torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float()))
    assert got == pytest.approx(monai, abs=1e-6)


def test_shifted_sphere_surface_distance_uses_anisotropic_spacing():
    spacing = (1.0, 1.0, 3.0)
    a = sphere((40, 40, 20), (20, 20, 10), 9.0, spacing)
    b = np.roll(a, 2, axis=2)  # shifted by 2 slices = 6 mm
    m = binary_metrics(b, a, spacing)
    assert m["hd95"] == pytest.approx(6.0, abs=0.75)
    assert 0 < m["asd"] < 6.0
    iso = binary_metrics(b, a, (1.0, 1.0, 1.0))
    assert iso["hd95"] == pytest.approx(2.0, abs=0.5)


def test_brats_empty_case_rules():
    empty = np.zeros((8, 8, 8), bool)
    some = empty.copy()
    some[2:4, 2:4, 2:4] = True
    both = binary_metrics(empty, empty, (1, 1, 1))
    assert (both["dice"], both["hd95"]) == (1.0, 0.0)
    missed = binary_metrics(empty, some, (1, 1, 1))
    assert (missed["dice"], missed["hd95"], missed["sensitivity"]) == (0.0, EMPTY_HD95, 0.0)
    false_alarm = binary_metrics(some, empty, (1, 1, 1))
    assert (false_alarm["dice"], false_alarm["hd95"]) == (0.0, EMPTY_HD95)
    assert np.isnan(false_alarm["sensitivity"])


def test_confusion_rates_and_regions():
    ref = np.zeros((10, 10, 10), int)
    ref[:5] = 2
    ref[:2] = 4
    pred = np.zeros_like(ref)
    pred[:4] = 2
    pred[:1] = 1
    m = evaluate_segmentation(pred, ref, (1, 1, 1), "brats2021")
    assert m["WT_sensitivity"] == pytest.approx(0.8)
    assert m["WT_specificity"] == pytest.approx(1.0)
    assert m["WT_precision"] == pytest.approx(1.0)
    assert m["WT_dice"] == pytest.approx(2 * 400 / 900)
    assert m["ET_dice"] == 0.0 and m["dice"] == m["WT_dice"]
    assert m["TC_dice"] == pytest.approx(2 * 100 / 300)
    with pytest.raises(MeddiffError, match="integer"):
        evaluate_segmentation(pred + 0.5, ref, (1, 1, 1))
    with pytest.raises(MeddiffError, match="shape"):
        evaluate_segmentation(pred[:5], ref, (1, 1, 1))


def test_a_region_the_cases_labels_do_not_delineate_is_undefined_not_missed():
    """BRATS 2012 labels the whole core as one class: a correct enhancing-tumour prediction inside it must not
    score ET Dice 0 (with HD95 at its empty-set maximum); WT and TC are scored as usual."""
    ref_2012 = np.zeros((10, 10, 10), int)
    ref_2012[:5] = 1  # oedema
    ref_2012[:2] = 2  # core
    ref = to_brats2021(ref_2012, "brats2012")
    pred = ref.copy()
    pred[:1] = 4  # enhancing rim predicted inside the core
    scored = {
        convention: score_case(pred, ref, (1, 1, 1), CaseFiles("c", {}, convention=convention))
        for convention in ("brats2012", "brats2021")
    }
    assert all(np.isnan(v) for k, v in scored["brats2012"].items() if k.startswith("ET_"))
    assert scored["brats2021"]["ET_dice"] == 0.0  # the same numbers from a convention with an ET class: a miss
    for convention in scored:
        assert scored[convention]["WT_dice"] == 1.0 and scored[convention]["TC_dice"] == 1.0


def test_lesion_wise_detection_by_size():
    ref = np.zeros((60, 60, 60), bool)
    ref |= sphere(ref.shape, (15, 15, 15), 4)  # ~0.27 mL: small
    ref |= sphere(ref.shape, (40, 40, 40), 12)  # ~7.2 mL
    pred = sphere(ref.shape, (40, 40, 40), 11) | sphere(ref.shape, (10, 50, 50), 3)  # misses the small one, 1 FP
    m = lesion_detection(pred, ref, (1, 1, 1))
    assert (m["n_lesions"], m["lesion_sensitivity"], m["false_positives"]) == (2, 0.5, 1)
    assert m["lesion_sensitivity_<1mL"] == 0.0 and m["lesion_sensitivity_1-10mL"] == 1.0
    assert np.isnan(m["lesion_sensitivity_>10mL"])


def test_paired_statistics():
    a = np.array([0.80, 0.82, 0.75, 0.90, 0.85, 0.78])
    b = a + np.array([0.05, 0.04, 0.06, 0.03, 0.05, 0.04])
    s = paired_comparison(a, b)
    assert s["mean_diff"] == pytest.approx(0.045)
    # Student's t-interval over the 6 patients: mean +- t(0.975, 5) * sd / sqrt(6)
    half = 2.5705818 * np.std(b - a, ddof=1) / np.sqrt(6)
    assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((0.045 - half, 0.045 + half), abs=1e-6)
    assert "boot_ci95_low" not in s  # too few patients for a bootstrap interval
    assert s["t_pvalue"] < 0.001 and s["wilcoxon_pvalue"] == pytest.approx(0.03125)
    assert s["cohens_dz"] == pytest.approx(0.045 / np.std(b - a, ddof=1))


def test_synthesis_metrics():
    label = np.zeros((10, 10, 10))
    label[:5, :4, :5] = 1  # 100 voxels of 2 mm^3 = 0.2 mL
    assert size_fidelity(0.25, label, (1, 1, 2))["error_pct"] == pytest.approx(-20.0)
    same = intensity_distance(np.arange(100.0), np.arange(100.0))
    assert same["wasserstein"] == 0 and same["ks"] == 0
    assert intensity_distance(np.arange(100.0) + 5, np.arange(100.0))["wasserstein"] == pytest.approx(5.0)
    train = np.random.default_rng(0).random((5, 8, 8))
    assert nearest_training_distance(train[3], train)["nearest_index"] == 3


def test_cli_single_files_and_folder_report(real_crop, tmp_path, capsys):
    ref_img = nib.load(real_crop["label"])
    label = np.asarray(ref_img.dataobj).astype(np.int16)
    for folder in ("ref", "a", "b"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        eroded = label.copy()
        eroded[: 20 + 5 * i] = 0
        write_nifti(tmp_path / "ref" / f"case{i}_seg.nii.gz", label, ref_img.affine)
        write_nifti(tmp_path / "a" / f"case{i}.nii.gz", eroded, ref_img.affine)
        write_nifti(tmp_path / "b" / f"case{i}.nii.gz", label, ref_img.affine)
    # BRATS 2012 labels (1 oedema, 2 core): evaluate the foreground as one region
    assert (
        main(
            [
                "eval",
                "seg",
                "--pred",
                str(tmp_path / "a" / "case0.nii.gz"),
                "--ref",
                str(tmp_path / "ref" / "case0_seg.nii.gz"),
                "--convention",
                "binary",
            ]
        )
        == 0
    )
    single = json.loads(capsys.readouterr().out)
    assert {"dice", "hd95", "sensitivity", "specificity", "precision"} <= set(single)
    summary = evaluate_folders(
        "seg", [tmp_path / "a", tmp_path / "b"], tmp_path / "ref", tmp_path / "report", convention=None
    )
    assert summary["b"]["dice"]["mean"] == 1.0 and summary["a"]["dice"]["mean"] < 1.0
    from PIL import Image

    with Image.open(tmp_path / "report" / "boxplot.png") as png:
        assert png.size[0] > 300 and png.size[1] > 200
    assert "| a |" in (tmp_path / "report" / "report.md").read_text()
    with Image.open(tmp_path / "report" / "examples.png") as png:  # the median case's outline is drawn in red
        pixels = np.asarray(png.convert("RGB")).astype(int)
        red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
        assert red.sum() > 20
    stats, skipped = compare_csv(tmp_path / "report" / "a_cases.csv", tmp_path / "report" / "b_cases.csv", ["dice"])
    assert stats["dice"]["mean_diff"] > 0 and not skipped
    # a second report into the same folder needs --force, and leaves the first one untouched
    before = (tmp_path / "report" / "summary.json").read_bytes()
    with pytest.raises(MeddiffError, match="exists already"):
        evaluate_folders("seg", [tmp_path / "a"], tmp_path / "ref", tmp_path / "report", convention=None)
    assert (tmp_path / "report" / "summary.json").read_bytes() == before
    # image-quality file mode, and a mismatched grid is a clear error
    t1 = real_crop["t1"]
    assert main(["eval", "sr", "--pred", str(t1), "--ref", str(t1)]) == 0
    assert json.loads(capsys.readouterr().out)["ssim"] == pytest.approx(1.0)
    other = write_nifti(tmp_path / "shifted.nii.gz", np.asarray(nib.load(t1).dataobj), np.eye(4))
    assert main(["eval", "sr", "--pred", str(other), "--ref", str(t1)]) == 2
    assert "differs from the reference" in capsys.readouterr().err
