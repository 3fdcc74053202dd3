"""Lesion-synthesis benchmark on the real labelled cases (configs/seg_cases.csv).

    python benchmarks/synth_benchmark.py [--weights meddiffusion/pretrained/synth-inpaint] [--out docs/benchmarks]
                                         [--only size|paint] [--steps 10]

* size fidelity: the mask generator on real brains, requested 0.1-100 mL, 1 and 3 foci, two seeds:
  mean absolute error in % of the request;
* painted lesions vs real tumours the generator never saw (the cases its weights did not train on): into each
  such host, lesions of 10 and 40 mL (whole-tumour sizes real gliomas have) and one of the volume of a real
  tumour (size-matched: the copy-paste donor's, 56-181 mL here, as large as the real tumours they are compared
  with, so that the classifier judges more than size) are painted by the model and, as the naive baseline,
  copy-pasted (a real tumour of another case, its voxels and shape, rescaled to the lesion's box). Every figure
  is given for the 10 and 40 mL lesions and for the size-matched ones apart. Per modality (brain-normalised):
  intensity distance to the real tumours of the other unseen cases (1-D Wasserstein, KS); the seam ratio
  (boundary edge strength over that of the unseen real tumours, 1 = as real; ``eval.synthesis``); and a
  real-vs-synthetic classifier (first-order and texture features of lesion and rim, all modalities, logistic
  regression cross-validated by patient: ROC AUC, 0.5 = indistinguishable; and the same on the first-order
  statistics of the lesion's interior alone, which judge the painting, not the placement). Changed voxels
  outside the painted (dilated) region are counted (must be 0);
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
from meddiffusion.eval.synthesis import (
    edge_strength,
    intensity_distance,
    interior_features,
    lesion_features,
    realism_auc,
)
from meddiffusion.io import load_subject, voxel_volume_ml
from meddiffusion.plotting import save_figure, subplots
from meddiffusion.provenance import provenance
from meddiffusion.synth.masks import lesion_mask
from meddiffusion.synth.pipeline import LesionRequest, LesionSynthesizer
from meddiffusion.transforms import brain_mask, normalise

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "configs" / "seg_cases.csv"
SIZES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
PAINT_SIZES = (10.0, 40.0)
METHODS = ("model", "copy_paste")


def load_cases(modalities: list[str]):
    """The labelled cases that have every modality the generator paints (the realism hosts need them all)."""
    out = {}
    for case in read_dataset(CASES):
        if not all(m in case.images for m in modalities):
            continue
        subject = load_subject({m: case.images[m] for m in modalities}, case.label, case_id=case.case_id)
        label = to_brats2021(subject["label"].data[0].numpy().round().astype(np.int64), case.convention)
        out[case.case_id] = (case, subject, label.astype(np.uint8))
    return out


def size_fidelity(cases, synthesizer) -> list[dict]:
    rows = []
    for case_id in ("Brats18_TCIA03_265_1", "brats2012_HG0015"):  # four-modality hosts: any generator's cases
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


def unseen_cases(cases, synthesizer) -> list[str]:
    """The cases the generator's weights did not train on (its config records them)."""
    seen = set(synthesizer.config.get("training", {}).get("data", {}).get("cases", []))
    return [c for c in sorted(cases) if c not in seen]


def paint(cases, synthesizer, steps: int) -> tuple[list[dict], dict, dict]:
    """Paint into every unseen host; per-lesion rows, the realism summary per method, and example volumes."""
    hosts, modalities = unseen_cases(cases, synthesizer), synthesizer.modalities
    if len(hosts) < 3:
        raise SystemExit(f"realism needs >= 3 cases the generator never saw; it saw all but {hosts}")
    normalised = {c: {m: brain_normalise(cases[c][1][m].data[0].numpy()) for m in modalities} for c in hosts}
    tumours = {c: cases[c][2] > 0 for c in hosts}
    rows, examples = [], {}
    lesions: dict[str, list[tuple[str, dict[str, np.ndarray], np.ndarray, bool]]] = {m: [] for m in METHODS}
    for h, host in enumerate(hosts):
        case, subject, label = cases[host]
        donor = hosts[(h + 1) % len(hosts)]
        pool = [c for c in hosts if c not in (host, donor)]
        brain = brain_mask(subject["flair"].data[0].numpy())
        donor_ml = round(float(tumours[donor].sum()) * voxel_volume_ml(subject["flair"].spacing), 1)
        for size, matched in [*((s, False) for s in PAINT_SIZES), (donor_ml, True)]:
            started = time.time()
            result = synthesizer.synthesize(subject, LesionRequest(size, seed=h, steps=steps), case.convention)
            seconds = time.time() - started
            lesion = result.lesion > 0
            row = {
                "host": host,
                "donor": donor,
                "size_matched": matched,
                "requested_ml": size,
                "measured_ml": result.info["measured_volume_ml"],
                "seconds": seconds,
                "painted_voxels": int(result.painted.sum()),
            }
            volumes = {"model": {}, "copy_paste": {}}
            for m in modalities:
                raw = subject[m].data[0].numpy()
                row[f"{m}_changed_outside"] = int((result.images[m][~result.painted] != raw[~result.painted]).sum())
                volumes["model"][m] = normalise_like(raw, result.images[m], brain)
                volumes["copy_paste"][m] = copy_paste(normalised[host][m], normalised[donor][m], tumours[donor], lesion)
                real = np.concatenate([normalised[c][m][tumours[c]] for c in pool])
                for name in METHODS:
                    d = intensity_distance(volumes[name][m][lesion], real)
                    row[f"{m}_{name}_wasserstein"], row[f"{m}_{name}_ks"] = d["wasserstein"], d["ks"]
                    row[f"{m}_{name}_edge"] = edge_strength(volumes[name][m], lesion)
            for name in METHODS:
                lesions[name].append((host, volumes[name], lesion, matched))
            rows.append(row)
            if h == 0 and not matched:
                examples[size] = (volumes["model"]["flair"], lesion)
    real = {
        "features": np.stack([_features(normalised[c], tumours[c]) for c in hosts]),
        "interior": np.stack([_features(normalised[c], tumours[c], interior_features) for c in hosts]),
        "edges": {m: np.mean([edge_strength(normalised[c][m], tumours[c]) for c in hosts]) for m in modalities},
    }
    summary = {"hosts": hosts, "modalities": modalities, "real_edge_strength": real["edges"], "size_matched": {}}
    for name in METHODS:
        for matched, into in ((False, summary), (True, summary["size_matched"])):
            chosen = [item for item in lesions[name] if item[3] == matched]
            into[name] = _realism(real, hosts, chosen, [r for r in rows if r["size_matched"] == matched], name)
    examples["real"] = (normalised[hosts[0]]["flair"], tumours[hosts[0]])
    return rows, summary, examples


def _realism(real: dict, hosts: list[str], lesions: list, rows: list[dict], name: str) -> dict:
    """Classifier AUCs (lesion and rim; interior alone) and seam ratios of one method's lesions against the real
    tumours of the hosts."""
    synthetic = np.stack([_features(v, mask) for _, v, mask, _ in lesions])
    interior = np.stack([_features(v, mask, interior_features) for _, v, mask, _ in lesions])
    groups = [host for host, *_ in lesions]
    return {
        "auc": realism_auc(real["features"], synthetic, hosts, groups),
        "auc_interior": realism_auc(real["interior"], interior, hosts, groups),
        **{
            f"{m}_seam_ratio": float(np.mean([r[f"{m}_{name}_edge"] for r in rows]) / real["edges"][m])
            for m in real["edges"]
        },
    }


def _features(volumes: dict[str, np.ndarray], mask: np.ndarray, features=lesion_features) -> np.ndarray:
    """A lesion's realism features, every modality side by side (in the generator's order)."""
    return np.concatenate([features(volume, mask) for volume in volumes.values()])


def normalise_like(raw: np.ndarray, volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Normalise ``volume`` with the intensity range of the original ``raw`` (painted voxels in the same units
    as the host's other voxels)."""
    return np.where(brain, normalise(volume, brain_range(raw, brain)), 0.0)


def grid(examples: dict, host: str, path: Path) -> None:
    """Rows: the host's real tumour, then each painted size; columns: axial, coronal, sagittal through it."""
    sizes = sorted(k for k in examples if k != "real")
    items = [(f"real tumour ({host})", *examples["real"])] + [(f"painted {s:g} mL", *examples[s]) for s in sizes]
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


def table(size_rows, paint_rows, summary) -> str:
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
        sizes = " and ".join(f"{s:g}" for s in PAINT_SIZES)
        matched = [r["requested_ml"] for r in paint_rows if r["size_matched"]]
        for title, chosen, realism in (
            (f"Lesions of {sizes} mL", [r for r in paint_rows if not r["size_matched"]], summary),
            (
                f"Size-matched lesions (each host painted at its copy-paste donor's tumour volume, "
                f"{min(matched):g}-{max(matched):g} mL, like the real tumours they are compared with)",
                [r for r in paint_rows if r["size_matched"]],
                summary["size_matched"],
            ),
        ):
            lines += [f"{title}:\n", *_realism_table(chosen, realism, summary), ""]
        changed = sum(r[f"{m}_changed_outside"] for r in paint_rows for m in summary["modalities"])
        seconds = [r["seconds"] for r in paint_rows]
        lines.append(
            f"{len(paint_rows)} painted lesions: voxels changed outside the painted region: {changed}; "
            f"seconds per lesion {np.mean(seconds):.1f} (min {np.min(seconds):.1f}, max {np.max(seconds):.1f}).\n"
        )
    return "\n".join(lines)


def _realism_table(rows: list[dict], realism: dict, summary: dict) -> list[str]:
    lines = [
        "| modality | method | Wasserstein to unseen real tumours | KS statistic | seam ratio (1 = as real) |",
        "|---|---|---|---|---|",
    ]
    for m in summary["modalities"]:
        for name in METHODS:
            w = np.mean([r[f"{m}_{name}_wasserstein"] for r in rows])
            ks = np.mean([r[f"{m}_{name}_ks"] for r in rows])
            lines.append(f"| {m} | {name} | {w:.3f} | {ks:.3f} | {realism[name][f'{m}_seam_ratio']:.2f} |")
    return [
        *lines,
        "",
        f"Real-vs-synthetic classifier AUC (0.5 = indistinguishable), {len(summary['hosts'])} unseen patients: "
        + ", ".join(f"{name} {realism[name]['auc']:.2f}" for name in METHODS)
        + "; on the lesion's interior alone (the painting, not the placement): "
        + ", ".join(f"{name} {realism[name]['auc_interior']:.2f}" for name in METHODS)
        + ".",
    ]


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
    made = provenance()  # the command and the code state at the start
    synthesizer = LesionSynthesizer.from_pretrained(args.weights)
    cases = load_cases(synthesizer.modalities)
    size_rows = size_fidelity(cases, synthesizer) if args.only != "paint" else []
    paint_rows, summary, examples = paint(cases, synthesizer, args.steps) if args.only != "size" else ([], {}, {})
    results = {
        "provenance": made,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "weights_sha256": synthesizer.hash,
        "steps": args.steps,
        "size_fidelity": size_rows,
        "painting": paint_rows,
        "realism": summary,
    }
    (out / "synth_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "synth_table.md").write_text(table(size_rows, paint_rows, summary))
    if examples:
        grid(examples, summary["hosts"][0], out / "synth_grid.png")
    print(table(size_rows, paint_rows, summary))


if __name__ == "__main__":
    main()
