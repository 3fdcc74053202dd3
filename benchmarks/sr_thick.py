"""Through-plane super-resolution of real thick-slice scans, which have no thin-slice reference (issue #15).

    python benchmarks/sr_thick.py [--weights meddiffusion/pretrained/sr-unet] [--scale 4] [--out docs/benchmarks]

The TCGA-GBM FG-6692 scans (0.9 x 0.9 x 5.5 mm, 26 slices, T1, T1c, T2, FLAIR) are upscaled through-plane. What
can be checked without a reference:

* consistency: degrading the output again (thick-slice averaging) gives back the input: the largest and the RMS
  difference inside the head, relative to the input's head intensity range (data consistency makes it ~0;
  without it, it says how far the network strays from what was measured);
* agreement of the two plane families: through-plane SR runs on the coronal and on the sagittal planes (both
  contain the thick axis) and averages them; two independent estimates of one volume should agree. Reported as
  the PSNR between the two families' outputs inside the head (higher = more consistent), for the network;
* negative voxels of the output (a magnitude image has none);
* a figure: axial, coronal and sagittal planes of the input (linear interpolation) beside the output.

Writes ``sr_thick.json`` and ``sr_thick.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from meddiffusion.io import load_image
from meddiffusion.plotting import save_figure, subplots
from meddiffusion.provenance import provenance
from meddiffusion.sr.degradation import degrade, plane_normals
from meddiffusion.sr.inference import family_volumes
from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions, default_slice_axis, normalised_input
from meddiffusion.sr.planes import Task
from meddiffusion.transforms import head_mask

ROOT = Path(__file__).resolve().parents[1]
SCANS = ROOT.parent / "shared" / "data" / "tcga_gbm_FG-6692_native"
CONTRASTS = {"T1": "T1_AX", "T1c": "T1_AX_POST_GAD", "T2": "T2_AX", "FLAIR": "FLAIR_AX"}


def family_agreement(pipeline: SRPipeline, volume: np.ndarray, scale: int, slice_axis: int) -> float:
    """PSNR (dB, normalised intensities, inside the head) between the network's outputs on the two plane
    families that contain the thick axis."""
    low = normalised_input(volume)[0]
    task = Task(scale, "through")
    normals = plane_normals("through", slice_axis)
    outs = list(family_volumes(pipeline.model, pipeline.config, low, task, slice_axis, normals)[0].values())
    head = head_mask(outs[0])
    mse = float(np.mean((outs[0][head] - outs[1][head]) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def check(pipeline: SRPipeline, linear: SRPipeline, name: str, path: Path, scale: int) -> tuple[dict, tuple]:
    image = load_image(path)
    volume = image.data[0].numpy().astype(np.float32)
    spacing = tuple(image.spacing)
    slice_axis = default_slice_axis(spacing, "through")
    options = UpscaleOptions(scale=scale, axis="through", progress=False, seed=0)
    result = pipeline.upscale(volume, image.affine, spacing, options)
    raw = pipeline.upscale(
        volume, image.affine, spacing, UpscaleOptions(**{**vars(options), "data_consistency": False})
    )
    interpolated = linear.upscale(volume, image.affine, spacing, options).volume
    head = head_mask(volume)
    span = float(volume[head].max() - volume[head].min())
    row = {"contrast": name, "input_shape": list(volume.shape), "spacing_mm": [float(s) for s in spacing]}
    for label, out in (("with_dc", result.volume), ("without_dc", raw.volume)):
        back = degrade(out, scale, "through", slice_axis)[tuple(slice(0, n) for n in volume.shape)]
        diff = np.abs(back - volume[tuple(slice(0, n) for n in back.shape)])[
            head[tuple(slice(0, n) for n in back.shape)]
        ]
        row[f"consistency_max_{label}"] = float(diff.max() / span)
        row[f"consistency_rms_{label}"] = float(np.sqrt(np.mean(diff**2)) / span)
        row[f"negative_voxels_{label}"] = float((out < 0).mean())
    row["family_agreement_psnr_db"] = family_agreement(pipeline, volume, scale, slice_axis)
    out_spacing = tuple(s / scale if a == slice_axis else s for a, s in enumerate(spacing))
    return row, (interpolated, result.volume, out_spacing)


def figure(examples: dict[str, tuple], path: Path) -> None:
    """Per contrast: linear interpolation and the network, in the three planes through the volume's centre, drawn
    at their physical aspect."""
    fig, axes = subplots(2 * len(examples), 3, (9, 3 * 2 * len(examples)))
    for r, (name, (interpolated, output, spacing)) in enumerate(examples.items()):
        aspects = (spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1])  # rows / columns
        for k, (title, volume) in enumerate((("linear", interpolated), ("network", output))):
            c = [n // 2 for n in volume.shape]
            lo, hi = np.percentile(volume, [1, 99.5])
            views = (volume[:, :, c[2]], volume[:, c[1], :], volume[c[0], :, :])
            for j, view in enumerate(views):
                ax = axes[2 * r + k][j]
                ax.imshow(np.rot90(view), cmap="gray", vmin=lo, vmax=hi, aspect=aspects[j])
                ax.set_axis_off()
                if j == 0:
                    ax.set_title(f"{name}: {title}", fontsize=9, loc="left")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None, help="SR weights folder (default: the shipped sr-unet)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    made = provenance()  # the command and the code state at the start
    pipeline = SRPipeline.from_pretrained(args.weights or "sr-unet")
    linear = SRPipeline.interpolation()
    rows, examples = [], {}
    for name, stem in CONTRASTS.items():
        row, example = check(pipeline, linear, name, SCANS / f"TCGA-FG-6692_{stem}.nii.gz", args.scale)
        rows.append(row)
        examples[name] = example
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "provenance": made,
        "weights": str(pipeline.folder),
        "weights_sha256": pipeline.hash,
        "scale": args.scale,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "rows": rows,
    }
    (args.out / "sr_thick.json").write_text(json.dumps(record, indent=2) + "\n")
    figure(examples, args.out / "sr_thick.png")


if __name__ == "__main__":
    main()
