"""``meddiff demo``: super-resolve the embedded real MRI with the shipped weights and show the result.

The embedded BRATS 2012 case was held out from training. A slab of its T1c (through the tumour) is degraded
4x in-plane by k-space cropping, then upscaled by bicubic interpolation, the regression UNet and the diffusion
model (2 samples, so an uncertainty map comes with it). Everything is written as NIfTI with a PNG panel,
the metrics and a provenance record.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from meddiffusion.errors import MeddiffError
from meddiffusion.eval.image import hfen, psnr, ssim
from meddiffusion.io import load_image, save_nifti, write_json
from meddiffusion.plotting import save_figure, subplots
from meddiffusion.provenance import provenance
from meddiffusion.sample_data import embedded_case
from meddiffusion.sr.degradation import degrade, low_res_affine
from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions
from meddiffusion.transforms import head_mask

OUTPUTS = (
    "lowres.nii.gz",
    "bicubic.nii.gz",
    "unet.nii.gz",
    "diffusion.nii.gz",
    "diffusion_std.nii.gz",
    "reference.nii.gz",
    "panel.png",
    "metrics.json",
    "provenance.json",
)


def run_demo(
    out: str | Path,
    force: bool = False,
    modality: str = "t1ce",
    scale: int = 4,
    slices: int = 24,
    steps: int = 1,
    samples: int = 2,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Run the demo into folder ``out``; returns the metrics (PSNR/SSIM in the reference's range, in the head)."""
    out = Path(out)
    if out.exists() and any((out / name).exists() for name in OUTPUTS) and not force:
        raise MeddiffError("holds demo outputs already (use --force to overwrite)", out)
    out.mkdir(parents=True, exist_ok=True)
    case = embedded_case()
    if modality not in case or modality == "label":
        raise MeddiffError(f"unknown modality {modality!r}; the embedded case has t1, t1ce, t2, flair")
    image = load_image(case[modality])
    label = load_image(case["label"], label=True).data[0].numpy()
    volume = image.data[0].numpy()
    center = int(np.argmax((label > 0).sum(axis=(0, 1)))) if label.any() else volume.shape[2] // 2
    z0 = int(np.clip(center - slices // 2, 0, volume.shape[2] - slices))
    reference = volume[:, :, z0 : z0 + slices]
    affine = image.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array([0, 0, z0]) + affine[:3, 3]
    low = degrade(reference, scale, "inplane")
    low_affine = low_res_affine(affine, scale, "inplane")
    spacing = tuple(float(s) * f for s, f in zip(image.spacing, (scale, scale, 1), strict=True))

    results = {}
    for method in ("bicubic", "unet", "diffusion"):
        options = UpscaleOptions(
            scale=scale, axis="inplane", steps=steps, samples=samples if method == "diffusion" else 1, seed=seed
        )
        results[method] = SRPipeline.for_method(method, device=device).upscale(low, low_affine, spacing, options)

    mask = head_mask(reference)
    data_range = float(reference[mask].max() - reference[mask].min())
    metrics = {
        name: {
            "psnr": psnr(r.volume, reference, data_range, mask),
            "ssim": ssim(r.volume, reference, data_range, mask, slice_axis=2),
            "hfen": hfen(r.volume, reference, mask=mask),
        }
        for name, r in results.items()
    }
    save_nifti(low, low_affine, out / "lowres.nii.gz", force=True)
    save_nifti(reference, affine, out / "reference.nii.gz", force=True)
    for name, r in results.items():
        save_nifti(r.volume, r.affine, out / f"{name}.nii.gz", force=True)
    save_nifti(results["diffusion"].std, results["diffusion"].affine, out / "diffusion_std.nii.gz", force=True)
    panel(
        low, {k: v.volume for k, v in results.items()}, reference, results["diffusion"].std, metrics, out / "panel.png"
    )
    write_json(
        {"data_range": data_range, "mask": "head (meddiffusion.transforms.head_mask)", "metrics": metrics},
        out / "metrics.json",
        force=True,
    )
    write_json(
        provenance(
            input=str(case[modality]),
            slab=[z0, z0 + slices],
            scale=scale,
            axis="inplane",
            options=dataclasses.asdict(UpscaleOptions(scale=scale, steps=steps, samples=samples, seed=seed)),
            weights_sha256={k: r.info.get("weights_sha256") for k, r in results.items()},
        ),
        out / "provenance.json",
        force=True,
    )
    return metrics


def panel(
    low: np.ndarray, outputs: dict[str, np.ndarray], reference: np.ndarray, std: np.ndarray, metrics: dict, path: Path
) -> Path:
    """PNG: input | bicubic | UNet | diffusion | reference on top; error maps and uncertainty below."""
    k = reference.shape[2] // 2
    vmax = float(np.percentile(reference, 99.5))
    columns = [
        ("low-res input", low[:, :, k]),
        *[(n, v[:, :, k]) for n, v in outputs.items()],
        ("reference", reference[:, :, k]),
    ]
    fig, axes = subplots(2, len(columns), (3 * len(columns), 6.4))
    for ax, (name, img) in zip(axes[0], columns, strict=True):
        ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        subtitle = f"\n{metrics[name]['psnr']:.2f} dB, SSIM {metrics[name]['ssim']:.3f}" if name in metrics else ""
        ax.set_title(name + subtitle, fontsize=9)
    axes[1][0].imshow(np.rot90(std[:, :, k]), cmap="magma")
    axes[1][0].set_title("diffusion uncertainty (sd)", fontsize=9)
    for ax, (name, vol) in zip(axes[1][1:], outputs.items(), strict=False):
        ax.imshow(np.rot90(np.abs(vol[:, :, k] - reference[:, :, k])), cmap="inferno", vmin=0, vmax=0.25 * vmax)
        ax.set_title(f"|{name} - reference|", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    return save_figure(fig, path, dpi=90)
