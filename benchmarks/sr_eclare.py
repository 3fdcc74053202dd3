"""The self-supervised through-plane peer ECLARE (Remedios et al.; ``eclare`` on PyPI) on the SR benchmark's 4x
thick-slice protocol, beside the toolkit's methods, with the same slabs and scoring (issue #15).

    python benchmarks/sr_eclare.py prepare --work .eclare            # thick slabs of the held-out volumes
    bash benchmarks/sr_eclare.sh .eclare                             # on a GPU machine (wheels in .eclare/whl)
    python benchmarks/sr_eclare.py score --work .eclare --eclare OUTDIR --out docs/benchmarks

ECLARE trains a network on the input volume itself (its in-plane detail), so it needs no training data, but on
2 CPU cores one 96 x 96 x 12 slab did not finish within 10 minutes; it ran on a lent GPU instead (about 55 s a
volume on an H200, 262,144 training patches; its default is 1,000,000). It is given the degradation's true slice
profile (a 4-voxel box: ``--relative-slice-thickness 4 --relative-slice-profile-type rect``) instead of
estimating it, which can only help it. Its outputs lie on the reference grid (checked: same affine and shape).
The toolkit's methods run here on the CPU. ``prepare`` writes ``in/NAME.nii.gz`` (the thick slab, with its
affine) and ``ref/NAME.nii.gz`` (the thin-slice truth); ``score`` writes ``sr_eclare.json`` and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sr_benchmark import held_out, reference, score, slab  # noqa: E402  (the benchmark's volumes, slabs and scoring)

from meddiffusion.sr.degradation import degrade, low_res_affine  # noqa: E402
from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions  # noqa: E402

SCALE = 4


def _slabs():
    """name -> (thin slab, its affine, head mask of the slab, head intensity range of the whole volume)."""
    for name, (volume, affine, label) in held_out().items():
        volume, head, data_range = reference(volume)
        window = slab(label, 48, crop=96)
        shift = np.eye(4)
        shift[:3, 3] = [w.start or 0 for w in window]
        yield name.replace(" ", "_"), volume[window].astype(np.float32), affine @ shift, head[window], data_range


def prepare(work: Path) -> None:
    for sub in ("in", "ref"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    for name, ref, affine, _, _ in _slabs():
        low = degrade(ref, SCALE, "through")
        nib.save(nib.Nifti1Image(low, low_res_affine(affine, SCALE, "through")), work / "in" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(ref, affine), work / "ref" / f"{name}.nii.gz")
        print(name, ref.shape, "->", low.shape)


def score_all(work: Path, eclare: Path, out: Path) -> dict:
    methods = {
        "linear": SRPipeline.interpolation(),
        "unet (shipped)": SRPipeline.from_pretrained("sr-unet"),
    }
    rows: dict[str, dict[str, dict]] = {}
    for name, ref, affine, mask, data_range in _slabs():
        result = eclare / f"{name}_eclare.nii.gz"
        if not result.exists():
            continue
        image = nib.load(result)
        if image.shape != ref.shape or not np.allclose(image.affine, affine, atol=1e-4):
            raise SystemExit(f"{result}: not on the reference grid ({image.shape}, {image.affine.tolist()})")
        low = np.asarray(nib.load(work / "in" / f"{name}.nii.gz").dataobj, dtype=np.float32)
        rows.setdefault("ECLARE", {})[name] = score(np.asarray(image.dataobj, np.float32), ref, mask, data_range)
        for method, pipeline in methods.items():
            options = UpscaleOptions(scale=SCALE, axis="through", progress=False, seed=0)
            upscaled = pipeline.upscale(
                low, low_res_affine(affine, SCALE, "through"), (1.0, 1.0, float(SCALE)), options
            )
            rows.setdefault(method, {})[name] = score(upscaled.volume, ref, mask, data_range)
        print(name, {m: round(r[name]["psnr"], 2) for m, r in rows.items()}, flush=True)
    names = sorted(next(iter(rows.values())))
    lines = ["| method | " + " | ".join(names) + " | mean PSNR | mean SSIM |", "|---|" + "---|" * (len(names) + 2)]
    for method, per in rows.items():
        psnr = [per[n]["psnr"] for n in names]
        ssim = [per[n]["ssim"] for n in names]
        lines.append(
            f"| {method} | " + " | ".join(f"{v:.2f}" for v in psnr) + f" | {np.mean(psnr):.2f} | {np.mean(ssim):.4f} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "sr_eclare.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "sr_eclare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work", type=Path, required=True)
    s = sub.add_parser("score")
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--eclare", type=Path, required=True, help="folder of ECLARE's *_eclare.nii.gz outputs")
    s.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.work)
    else:
        score_all(args.work, args.eclare, args.out)


if __name__ == "__main__":
    main()
