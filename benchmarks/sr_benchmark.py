"""Super-resolution benchmark on real volumes held out from training.

    python benchmarks/sr_benchmark.py [--weights-dir meddiffusion/pretrained] [--slices 8] [--out docs/benchmarks]
    python benchmarks/sr_benchmark.py --validation configs/sr_unet.yaml --out DIR   # choose defaults here
    python benchmarks/sr_benchmark.py --rows unet "diffusion 1 step, mean of 4" ...  # only these (and bicubic)

Held out (never trained on, never used to choose a default; configs/sr_*.yaml): BRATS 2012 HG0015 (T1, T1c, T2,
FLAIR; embedded), and from ../shared/data when present BRATS 2015 pat0006 (FLAIR, T1c) and BraTS 2018 2013_11 and
TCIA03_265 (T1, T1c, T2, FLAIR; two sites, raw scanner intensities). For each volume a slab through the tumour
is degraded (4x and 2x in-plane by k-space cropping, 4x through-plane by averaging slices), upscaled by every
method, and scored inside the head
(PSNR and slice-wise SSIM with the whole reference volume's head intensity range as data range, HFEN, the
gradient-energy ratio to the reference: below 1 smoother, above 1 noisier; with several samples, the Spearman
correlation of their std with the error of their mean). Writes ``sr_results.json`` and ``sr_table.md`` into
``--out``; docs/benchmarks.md quotes them with date, machine and command. ``--validation CONFIG`` runs the same
protocol on the config's validation volumes (``data.val``) instead, where defaults (method, steps, samples) are
chosen: ``sr_validation.json`` and ``sr_validation.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from meddiffusion.eval.image import (
    gradient_energy_ratio,
    hfen,
    lpips_or_reason,
    psnr,
    ssim,
    uncertainty_error_correlation,
)
from meddiffusion.io import load_image
from meddiffusion.provenance import provenance
from meddiffusion.sample_data import embedded_case
from meddiffusion.sr.degradation import degrade, low_res_affine
from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions
from meddiffusion.transforms import head_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED = DATA / "brats2015_deepmedic" / "brats_2013_pat0006_1"
BRATS2018 = ("2013_11", "TCIA03_265")
CONTRASTS = (("t1", "T1"), ("t1ce", "T1c"), ("t2", "T2"), ("flair", "FLAIR"))


def held_out() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (volume, affine, tumour-center index) for every held-out volume available."""
    case = embedded_case()
    label = load_image(case["label"], label=True).data[0].numpy()
    volumes = {}
    for modality, contrast in CONTRASTS:
        image = load_image(case[modality])
        volumes[f"HG0015 {contrast}"] = (image.data[0].numpy(), image.affine, label)
    if SHARED.exists():
        seg = load_image(SHARED / "OTMultiClass.nii.gz", label=True).data[0].numpy()
        for name, contrast in (("Flair_subtrMeanDivStd.nii.gz", "FLAIR"), ("T1c_subtrMeanDivStd.nii.gz", "T1c")):
            image = load_image(SHARED / name)
            volumes[f"pat0006 {contrast}"] = (image.data[0].numpy(), image.affine, seg)
    for case_id in BRATS2018:
        folder = DATA / "brats2018_deepbrainseg" / f"Brats18_{case_id}_1"
        if folder.exists():
            seg = load_image(folder / f"{folder.name}_seg.nii.gz", label=True).data[0].numpy()
            for modality, contrast in CONTRASTS:
                image = load_image(folder / f"{folder.name}_{modality}.nii.gz")
                volumes[f"{case_id} {contrast}"] = (image.data[0].numpy(), image.affine, seg)
    return volumes


def validation_volumes(config_path: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The same, for a training config's validation volumes (``data.val``); the slab goes through the tumour of
    the case's label where the image lies in a labelled case folder (``read_case``), else through the middle of the
    head."""
    from meddiffusion.data.layouts import read_case
    from meddiffusion.errors import MeddiffError
    from meddiffusion.sr.train import load_sr_config

    volumes = {}
    for path in map(Path, load_sr_config(config_path).data.val):
        image = load_image(path)
        volume = image.data[0].numpy()
        try:
            seg = read_case(path.parent).label
        except MeddiffError:  # not a case folder
            seg = None
        label = load_image(seg, label=True).data[0].numpy() if seg else head_mask(volume).astype(np.uint8)
        volumes[path.name.split(".")[0]] = (volume, image.affine, label)
    return volumes


def reference(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A held-out volume as it is scored: shifted to >= 0 (magnitude images; some sets are z-scored), its head mask,
    and the head's intensity range of the whole volume (the data range of every slab cut from it)."""
    volume = volume - min(float(volume.min()), 0.0)
    head = head_mask(volume)
    return volume, head, float(volume[head].max() - volume[head].min())


def slab(label: np.ndarray, slices: int, crop: int | None = None) -> tuple[slice, slice, slice]:
    """Window of ``slices`` axial slices through the tumour center (optionally ``crop`` voxels in-plane)."""
    center = np.argwhere(label > 0).mean(0).astype(int)
    z0 = int(np.clip(center[2] - slices // 2, 0, label.shape[2] - slices))
    xy = [slice(None), slice(None)]
    if crop:
        xy = [
            slice(s0, s0 + crop)
            for s0 in (
                int(np.clip(c - crop // 2, 0, n - crop)) for c, n in zip(center[:2], label.shape[:2], strict=True)
            )
        ]
    return (*xy, slice(z0, z0 + slices))


def score(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float, std: np.ndarray | None = None
) -> dict[str, float]:
    out = {
        "psnr": psnr(pred, ref, data_range, mask),
        "ssim": ssim(pred, ref, data_range, mask, slice_axis=2),
        "hfen": hfen(pred, ref, mask=mask),
        "gradient_energy_ratio": gradient_energy_ratio(pred, ref, mask),
    }
    if std is not None:
        out["uncertainty_spearman"] = uncertainty_error_correlation(std, pred, ref, mask)
    return out


def methods(task: str, full: bool) -> list[tuple[str, dict]]:
    """(row name, UpscaleOptions overrides) for a task."""
    rows = [
        ("bicubic" if task != "through4" else "linear", {"method": "bicubic"}),
        ("bicubic, no DC" if task != "through4" else "linear, no DC", {"method": "bicubic", "data_consistency": False}),
        ("unet", {"method": "unet"}),
        ("unet, no DC", {"method": "unet", "data_consistency": False}),
    ]
    steps = (1, 2, 4, 10, 50) if full else (4,)
    rows += [(f"diffusion {s} steps", {"method": "diffusion", "steps": s}) for s in steps]
    rows += [
        ("diffusion 4 steps, no DC", {"method": "diffusion", "steps": 4, "data_consistency": False}),
        ("diffusion 4 steps, mean of 4", {"method": "diffusion", "steps": 4, "samples": 4}),
        ("diffusion 1 step, mean of 4", {"method": "diffusion", "steps": 1, "samples": 4}),
    ]
    return rows


def run(args: argparse.Namespace) -> dict:
    tasks = {"inplane4": (4, "inplane"), "inplane2": (2, "inplane"), "through4": (4, "through")}
    results: dict = {"tasks": {}, "lpips": None}
    weights = {m: str(Path(args.weights_dir) / f"sr-{m}") for m in ("diffusion", "unet")}
    volumes = validation_volumes(args.validation) if args.validation else held_out()
    if args.quick:
        volumes = dict(list(volumes.items())[:1])
    for name, (volume, affine, label) in volumes.items():
        volume, head, data_range = reference(volume)
        for task, (scale, axis) in tasks.items():
            window = slab(label, 48, crop=96) if axis == "through" else slab(label, args.slices)
            ref, mask = volume[window], head[window]
            low = degrade(ref, scale, axis)
            rows = methods(task, full=task == "inplane4" and not args.quick)
            rows = rows[:5] if args.quick else rows
            if args.rows:  # these rows on every task, and interpolation: the figure every row is read against
                rows = [r for i, r in enumerate(methods(task, full=True)) if i == 0 or _base(r[0]) in args.rows]
            for row, overrides in rows:
                pipeline, rest = _pipeline(overrides, weights)
                options = UpscaleOptions(scale=scale, axis=axis, progress=False, seed=0, **rest)
                started = time.perf_counter()
                out = pipeline.upscale(low, low_res_affine(affine, scale, axis), (1.0, 1.0, 1.0), options)
                seconds = time.perf_counter() - started
                entry = {**score(out.volume, ref, mask, data_range, out.std), "seconds": seconds}
                results["tasks"].setdefault(task, {}).setdefault(row, {})[name] = entry
                print(
                    f"{task:9s} {name:14s} {row:30s} {entry['psnr']:6.2f} dB  SSIM {entry['ssim']:.4f}  "
                    f"HFEN {entry['hfen']:.4f}  {seconds:6.1f} s",
                    flush=True,
                )
            if results["lpips"] is None:
                results["lpips"] = lpips_or_reason(ref, ref, data_range)
    results["timing"] = timing(weights) if args.timing else None
    return results


def _base(row: str) -> str:
    """A row's name with the through-plane task's wording made the in-plane one's ("linear" is "bicubic")."""
    return row.replace("linear", "bicubic")


def _pipeline(overrides: dict, weights: dict[str, str]) -> tuple[SRPipeline, dict]:
    """The row's pipeline (its ``method`` with the benchmarked weights) and its remaining upscale options."""
    rest = dict(overrides)
    method = rest.pop("method")
    return SRPipeline.for_method(method, weights.get(method)), rest


def timing(weights: dict[str, str]) -> dict[str, float]:
    """Seconds to upscale a 256 x 256 x 155 volume at 2x in-plane (input 128 x 128 x 155), whole volume."""
    volumes = held_out()
    volume, _, _ = volumes.get("pat0006 FLAIR", next(iter(volumes.values())))
    padded = np.zeros((256, 256, 155), np.float32)
    sx, sy = min(volume.shape[0], 256), min(volume.shape[1], 256)
    sz = min(volume.shape[2], 155)
    padded[:sx, :sy, :sz] = volume[:sx, :sy, :sz] - volume.min()
    low = degrade(padded, 2, "inplane")
    out = {}
    for row, overrides in (
        ("bicubic", {"method": "bicubic"}),
        ("unet", {"method": "unet"}),
        ("diffusion 4 steps", {"method": "diffusion", "steps": 4}),
        ("diffusion 1 step", {"method": "diffusion", "steps": 1}),
    ):
        pipeline, rest = _pipeline(overrides, weights)
        started = time.perf_counter()
        pipeline.upscale(low, np.eye(4), (2.0, 2.0, 1.0), UpscaleOptions(scale=2, progress=False, **rest))
        out[row] = time.perf_counter() - started
        print(f"timing 256x256x155 @2x {row}: {out[row]:.1f} s", flush=True)
    return out


def table(results: dict) -> str:
    """Markdown: one table per task, a column per volume, plus mean and worst."""
    lines = []
    titles = {
        "inplane4": "4x in-plane (k-space crop)",
        "inplane2": "2x in-plane (k-space crop)",
        "through4": "4x through-plane (4 thin slices averaged)",
    }
    for task, rows in results["tasks"].items():
        names = list(next(iter(rows.values())))
        lines += [
            f"#### {titles[task]}: PSNR (dB) / SSIM, inside the head",
            "",
            "| method | "
            + " | ".join(names)
            + " | mean PSNR | worst PSNR | mean SSIM | mean HFEN | gradient energy / reference | s / slab |",
            "|---" * (len(names) + 7) + "|",
        ]
        for row, per_volume in rows.items():
            p = [per_volume[n]["psnr"] for n in names]
            cells = [f"{per_volume[n]['psnr']:.2f} / {per_volume[n]['ssim']:.3f}" for n in names]
            lines.append(
                f"| {row} | "
                + " | ".join(cells)
                + f" | **{np.mean(p):.2f}** | {np.min(p):.2f} | {np.mean([per_volume[n]['ssim'] for n in names]):.4f}"
                f" | {np.mean([per_volume[n]['hfen'] for n in names]):.4f}"
                f" | {np.mean([per_volume[n]['gradient_energy_ratio'] for n in names]):.2f}"
                f" | {np.mean([per_volume[n]['seconds'] for n in names]):.1f} |"
            )
        lines.append("")
    if results.get("timing"):
        lines += ["#### Whole volume 256 x 256 x 155 at 2x in-plane", "", "| method | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in results["timing"].items()]
        lines.append("")
    lines.append(f"LPIPS: {results['lpips']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights-dir", default=str(Path(__file__).resolve().parents[1] / "meddiffusion" / "pretrained")
    )
    parser.add_argument("--slices", type=int, default=8, help="axial slices per in-plane slab")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks"))
    parser.add_argument("--no-timing", dest="timing", action="store_false")
    parser.add_argument("--quick", action="store_true", help="one volume, few methods: a smoke test of the script")
    parser.add_argument("--only-timing", action="store_true", help="only the whole-volume timing (sr_timing.json)")
    parser.add_argument("--validation", metavar="CONFIG", help="score a training config's validation volumes instead")
    parser.add_argument("--rows", nargs="+", metavar="ROW", help="score only these method rows (interpolation too)")
    args = parser.parse_args()
    known = {_base(row) for task in ("inplane4", "through4") for row, _ in methods(task, full=True)}
    if args.rows and set(args.rows) - known:
        parser.error(f"unknown row(s) {sorted(set(args.rows) - known)}; known: {sorted(known)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only_timing:
        weights = {m: str(Path(args.weights_dir) / f"sr-{m}") for m in ("diffusion", "unet")}
        record = {"seconds": timing(weights), "threads": torch.get_num_threads(), "machine": platform.machine()}
        (out / "sr_timing.json").write_text(json.dumps(record, indent=2) + "\n")
        return
    started = time.time()
    made = provenance()  # the command and the code state at the start
    results = run(args)
    results["provenance"] = made
    results["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or ''}"
    results["wall_seconds"] = time.time() - started
    json_name, table_name = (
        ("sr_validation.json", "sr_validation.md") if args.validation else ("sr_results.json", "sr_table.md")
    )
    (out / json_name).write_text(json.dumps(results, indent=2) + "\n")
    (out / table_name).write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
