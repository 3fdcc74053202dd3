"""Lesion-synthesis benchmark on the real labelled cases (configs/seg_cases.csv).

    python benchmarks/synth_benchmark.py [--weights meddiffusion/pretrained/synth-inpaint] [--out docs/benchmarks]
                                         [--only size|paint] [--steps 10]

* size fidelity: the mask generator on real brains, requested 0.1-100 mL, 1 and 3 foci, two seeds:
  mean absolute error in % of the request;
* painted lesions vs real ones: for each host case, lesions of 2, 10 and 40 mL are painted by the model and,
  as the naive baseline, copy-pasted (a real tumour of another case, its voxels and shape, rescaled to the
  requested volume). Their whole-tumour intensities (brain-normalised, per modality) are compared with the
  real tumours of the *other* cases (neither host nor donor): 1-D Wasserstein distance and KS statistic. The
  seam: mean gradient magnitude on the lesion's outer boundary, relative to that on real tumour boundaries (1 =
  as real; copy-paste leaves edges). Changed voxels outside the painted (dilated) region are counted (must be 0);
* seconds per case on this machine's CPU;
* a PNG grid: synthetic lesions by size in the three planes next to a real tumour.

Writes ``synth_results.json``, ``synth_table.md`` and ``synth_grid.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from meddiffusion.data.labels import to_brats2021
from meddiffusion.data.layouts import read_dataset
from meddiffusion.data.prepare import brain_normalise, brain_range
from meddiffusion.eval.synthesis import intensity_distance
from meddiffusion.io import load_subject, voxel_volume_ml
from meddiffusion.plotting import save_figure, subplots
from meddiffusion.synth.masks import lesion_mask
from meddiffusion.synth.pipeline import LesionRequest, LesionSynthesizer
from meddiffusion.transforms import brain_mask, normalise

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "configs" / "seg_cases.csv"
MODALITIES = ("flair", "t1ce")
SIZES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
PAINT_SIZES = (2.0, 10.0, 40.0)


def load_cases():
    out = {}
    for case in read_dataset(CASES):
        subject = load_subject({m: case.images[m] for m in MODALITIES}, case.label, case_id=case.case_id)
        label = to_brats2021(subject["label"].data[0].numpy().round().astype(np.int64), case.convention)
        out[case.case_id] = (case, subject, label.astype(np.uint8))
    return out


def size_fidelity(cases, synthesizer) -> list[dict]:
    rows = []
    for case_id in ("brats2015_pat0006", "brats2012_HG0015"):
        _, subject, label = cases[case_id]
        brain = brain_mask(subject["flair"].data[0].numpy())
        spacing = subject["flair"].spacing
        for size in SIZES:
            for foci in (1, 3):
                for seed in (0, 1):
                    rng = np.random.default_rng(seed)
                    mask = lesion_mask(brain, spacing, size, synthesizer.templates, rng, foci, avoid=label > 0)
                    measured = (mask > 0).sum() * voxel_volume_ml(spacing)
                    rows.append(
                        {
                            "host": case_id,
                            "requested_ml": size,
                            "foci": foci,
                            "seed": seed,
                            "measured_ml": measured,
                            "abs_error_pct": 100 * abs(measured - size) / size,
                            "outside_brain_voxels": int(((mask > 0) & ~brain).sum()),
                        }
                    )
    return rows


def _seam(image: np.ndarray, lesion: np.ndarray) -> float:
    """Mean gradient magnitude on the one-voxel shell just outside the lesion."""
    shell = ndimage.binary_dilation(lesion, iterations=1) & ~lesion
    grad = np.sqrt(sum(g**2 for g in np.gradient(image)))
    return float(grad[shell].mean())


def copy_paste(host: np.ndarray, donor_img: np.ndarray, donor_wt: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Naive baseline: the donor's tumour (voxels and shape), rescaled to the target lesion's bounding box and
    pasted where the target lesion is."""
    out = host.copy()
    box_d = ndimage.find_objects(donor_wt.astype(int))[0]
    box_t = ndimage.find_objects(target.astype(int))[0]
    zoom = [(t.stop - t.start) / (d.stop - d.start) for d, t in zip(box_d, box_t, strict=True)]
    piece = ndimage.zoom(donor_img[box_d], zoom, order=1)
    shape = ndimage.zoom(donor_wt[box_d].astype(float), zoom, order=1) > 0.5
    region = tuple(slice(t.start, t.start + s) for t, s in zip(box_t, piece.shape, strict=True))
    sub = out[region]
    sl = tuple(slice(0, n) for n in sub.shape)
    sub[shape[sl]] = piece[sl][shape[sl]]
    return out


def paint(cases, synthesizer, steps: int) -> tuple[list[dict], dict]:
    normalised = {
        cid: {m: brain_normalise(s[m].data[0].numpy()) for m in MODALITIES} for cid, (_, s, _) in cases.items()
    }
    real_seam = {m: np.mean([_seam(normalised[c][m], cases[c][2] > 0) for c in cases]) for m in MODALITIES}
    rows, examples = [], {}
    ids = sorted(cases)
    for h, host in enumerate(ids):
        case, subject, label = cases[host]
        donor = ids[(h + 1) % len(ids)]
        pool = [c for c in ids if c not in (host, donor)]
        for size in PAINT_SIZES:
            started = time.time()
            result = synthesizer.synthesize(subject, LesionRequest(size, seed=h, steps=steps), case.convention)
            seconds = time.time() - started
            lesion = result.lesion > 0
            brain = brain_mask(subject["flair"].data[0].numpy())
            row = {
                "host": host,
                "donor": donor,
                "requested_ml": size,
                "measured_ml": result.info["measured_volume_ml"],
                "seconds": seconds,
                "painted_voxels": int(result.painted.sum()),
            }
            painted = {}
            for m in MODALITIES:
                raw = subject[m].data[0].numpy()
                row[f"{m}_changed_outside"] = int((result.images[m][~result.painted] != raw[~result.painted]).sum())
                synth_n = painted[m] = normalise_like(raw, result.images[m], brain)
                pasted = copy_paste(normalised[host][m], normalised[donor][m], cases[donor][2] > 0, lesion)
                real = np.concatenate([normalised[c][m][cases[c][2] > 0] for c in pool])
                for name, volume in (("model", synth_n), ("copy_paste", pasted)):
                    d = intensity_distance(volume[lesion], real)
                    row[f"{m}_{name}_wasserstein"] = d["wasserstein"]
                    row[f"{m}_{name}_ks"] = d["ks"]
                    row[f"{m}_{name}_seam_ratio"] = _seam(volume, lesion) / real_seam[m]
            rows.append(row)
            if host == "brats2015_pat0006":
                examples[size] = (painted["flair"], lesion)
    return rows, examples


def normalise_like(raw: np.ndarray, volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Normalise ``volume`` with the intensity range of the original ``raw`` (painted voxels in the same units
    as the host's other voxels)."""
    return np.where(brain, normalise(volume, brain_range(raw, brain)), 0.0)


def grid(examples: dict, real: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    """Rows: real tumour, then each synthetic size; columns: axial, coronal, sagittal through the lesion."""
    items = [("real tumour (pat0006)", *real)] + [(f"synthetic {s:g} mL", *examples[s]) for s in sorted(examples)]
    fig, axes = subplots(len(items), 3, (9, 3 * len(items)))
    for r, (title, volume, lesion) in enumerate(items):
        c = np.argwhere(lesion).mean(0).astype(int)
        views = (volume[:, :, c[2]], volume[:, c[1], :], volume[c[0], :, :])
        outlines = (lesion[:, :, c[2]], lesion[:, c[1], :], lesion[c[0], :, :])
        for k, (view, outline) in enumerate(zip(views, outlines, strict=True)):
            ax = axes[r][k]
            ax.imshow(np.rot90(view), cmap="gray", vmin=0, vmax=1)
            ax.contour(np.rot90(outline.astype(float)), levels=[0.5], colors="r", linewidths=0.5)
            ax.set_axis_off()
            if k == 0:
                ax.set_title(title, fontsize=9, loc="left")
    save_figure(fig, path)


def table(size_rows, paint_rows) -> str:
    lines = []
    if size_rows:
        lines += ["| requested mL | foci | mean abs error % | max abs error % |", "|---|---|---|---|"]
    for size in SIZES if size_rows else ():
        for foci in (1, 3):
            errs = [r["abs_error_pct"] for r in size_rows if r["requested_ml"] == size and r["foci"] == foci]
            lines.append(f"| {size:g} | {foci} | {np.mean(errs):.2f} | {np.max(errs):.2f} |")
    all_errs = [r["abs_error_pct"] for r in size_rows]
    lines += (
        []
        if not size_rows
        else [
            f"\nAll {len(all_errs)} requests: mean absolute error {np.mean(all_errs):.2f} %, "
            f"max {np.max(all_errs):.2f} %; voxels outside the brain: "
            f"{sum(r['outside_brain_voxels'] for r in size_rows)}.\n"
        ]
    )
    if paint_rows:
        lines += [
            "| modality | method | Wasserstein to real tumours | KS statistic | seam ratio (1 = as real) |",
            "|---|---|---|---|---|",
        ]
        for m in MODALITIES:
            for name in ("model", "copy_paste"):
                w = np.mean([r[f"{m}_{name}_wasserstein"] for r in paint_rows])
                ks = np.mean([r[f"{m}_{name}_ks"] for r in paint_rows])
                seam = np.mean([r[f"{m}_{name}_seam_ratio"] for r in paint_rows])
                lines.append(f"| {m} | {name} | {w:.3f} | {ks:.3f} | {seam:.2f} |")
        changed = sum(r[f"{m}_changed_outside"] for r in paint_rows for m in MODALITIES)
        seconds = [r["seconds"] for r in paint_rows]
        lines += [
            f"\n{len(paint_rows)} painted cases: voxels changed outside the painted region: {changed}; "
            f"seconds per case {np.mean(seconds):.1f} (min {np.min(seconds):.1f}, max {np.max(seconds):.1f}).\n"
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--only", choices=["size", "paint"])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    synthesizer = LesionSynthesizer.from_pretrained(args.weights)
    cases = load_cases()
    size_rows = size_fidelity(cases, synthesizer) if args.only != "paint" else []
    paint_rows, examples = paint(cases, synthesizer, args.steps) if args.only != "size" else ([], {})
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "weights_sha256": synthesizer.hash,
        "steps": args.steps,
        "size_fidelity": size_rows,
        "painting": paint_rows,
    }
    (out / "synth_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "synth_table.md").write_text(table(size_rows, paint_rows))
    if examples:
        _, subject, label = cases["brats2015_pat0006"]
        grid(examples, (brain_normalise(subject["flair"].data[0].numpy()), label > 0), out / "synth_grid.png")
    print(table(size_rows, paint_rows))


if __name__ == "__main__":
    main()
