"""``meddiff eval``: evaluate files or folders and write reports (per-case CSV, JSON summary, Markdown, PNG).

Folders are matched by case id: a file's name without its image suffix and without a trailing ``_seg``,
``-seg`` or ``_label``. Several prediction folders (methods) can be evaluated against one reference folder;
their box plots sit side by side.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from meddiffusion.data.labels import check_labels
from meddiffusion.errors import MeddiffError
from meddiffusion.eval.image import image_metrics
from meddiffusion.eval.segmentation import evaluate_segmentation
from meddiffusion.eval.stats import paired_comparison
from meddiffusion.io import atomic_write, check_output, load_image, same_grid, write_json, write_text
from meddiffusion.paths import image_suffix, strip_suffix
from meddiffusion.plotting import save_figure, subplots

SUMMARY_KEYS = {
    "sr": ("psnr", "ssim", "nrmse", "hfen", "gradient_energy_ratio"),
    "seg": ("dice", "hd95", "sensitivity", "specificity", "precision", "WT_dice", "TC_dice", "ET_dice"),
}


def _load_pair(pred: Path, ref: Path, label: bool):
    p = load_image(pred, label=label)
    r = load_image(ref, label=label)
    if not same_grid(p, r):
        raise MeddiffError(
            f"grid {tuple(p.spatial_shape)} differs from the reference {Path(ref).name} {tuple(r.spatial_shape)}"
            " (shape or affine)",
            pred,
        )
    return p, r


def evaluate_sr_files(
    pred: str | Path, ref: str | Path, mask: str | Path | None = None, data_range: float | None = None
) -> dict[str, Any]:
    """SR metrics of one prediction against its reference; data range defaults to the reference's
    (max - min inside the mask), and is always reported."""
    p, r = _load_pair(Path(pred), Path(ref), label=False)
    m = None
    if mask is not None:
        mask_img = load_image(mask, label=True)
        if not same_grid(mask_img, r):
            raise MeddiffError("mask grid differs from the reference", mask)
        m = mask_img.data[0].numpy() > 0
    pa, ra = p.data[0].numpy(), r.data[0].numpy()
    values = ra[m] if m is not None else ra
    data_range = float(values.max() - values.min()) if data_range is None else float(data_range)
    return image_metrics(pa, ra, data_range, m)


def evaluate_seg_files(pred: str | Path, ref: str | Path, convention: str | None = "brats2021") -> dict[str, Any]:
    """Segmentation metrics of one label map against its reference; values outside ``convention`` are an error
    naming the file (None: any label > 0 is foreground)."""
    p, r = _load_pair(Path(pred), Path(ref), label=True)
    if convention is not None:
        for image, path in ((p, pred), (r, ref)):
            check_labels(image.data[0].numpy(), convention, path)
    return evaluate_segmentation(p.data[0].numpy(), r.data[0].numpy(), tuple(r.spacing), convention)


def case_id(path: Path) -> str:
    return re.sub(r"([_-](seg|label))$", "", strip_suffix(path).name)


def match_cases(pred_dir: Path, ref_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case id, prediction, reference) for every case present in both folders; none in common is an error."""

    def index(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise MeddiffError("folder not found", folder)
        return {case_id(p): p for p in sorted(folder.iterdir()) if image_suffix(p)}

    preds, refs = index(pred_dir), index(ref_dir)
    common = sorted(set(preds) & set(refs))
    if not common:
        raise MeddiffError(f"no case ids in common with the reference folder {ref_dir}", pred_dir)
    return [(c, preds[c], refs[c]) for c in common]


def summarise(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean, sd, median, n of each metric over cases (non-finite values excluded and counted)."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows if isinstance(r.get(key), (int, float))], dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            continue
        out[key] = {
            "mean": float(finite.mean()),
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "median": float(np.median(finite)),
            "n": int(finite.size),
            "n_nonfinite": int(values.size - finite.size),
        }
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    fields = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write, suffix=".csv")


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise MeddiffError("file not found", path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "case_id" not in rows[0]:
        raise MeddiffError("not a per-case metrics CSV (needs a case_id column)", path)
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(value: str) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def evaluate_folders(
    kind: str,
    preds: Sequence[str | Path],
    ref_dir: str | Path,
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    convention: str | None = "brats2021",
    force: bool = False,
) -> dict[str, Any]:
    """Evaluate one or more prediction folders against ``ref_dir`` and write the report into ``out_dir``.

    Every report file is checked before any work: an earlier report is only replaced with ``force``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names or [Path(p).name for p in preds])
    if len(names) != len(preds):
        raise MeddiffError(f"{len(preds)} prediction folders but {len(names)} names")
    outputs = [out_dir / f"{name}_cases.csv" for name in names]
    outputs += [out_dir / f for f in ("summary.json", "report.md", "boxplot.png", "examples.png")]
    for path in outputs:
        check_output(path, force)
    per_method: dict[str, list[dict[str, Any]]] = {}
    examples: dict[str, tuple[str, Path, Path]] = {}
    for name, pred_dir in zip(names, preds, strict=True):
        rows, pairs = [], match_cases(Path(pred_dir), Path(ref_dir))
        for cid, p, r in tqdm(pairs, desc=f"eval {name}", leave=False):
            metrics = evaluate_sr_files(p, r) if kind == "sr" else evaluate_seg_files(p, r, convention)
            rows.append({"case_id": cid, **metrics})
        per_method[name] = rows
        key = "psnr" if kind == "sr" else "dice"
        median = int(np.argsort([r[key] for r in rows])[len(rows) // 2])  # the median case, not the best
        examples[name] = pairs[median]
        write_csv(rows, out_dir / f"{name}_cases.csv")
    keys = SUMMARY_KEYS[kind]
    summary = {name: summarise(rows, keys) for name, rows in per_method.items()}
    write_json(summary, out_dir / "summary.json", force=True)
    write_text(markdown_table(summary, keys), out_dir / "report.md", force=True)
    box_plot(per_method, keys, out_dir / "boxplot.png")
    example_plot(kind, examples, out_dir / "examples.png")
    return summary


def markdown_table(summary: dict[str, dict[str, dict[str, float]]], keys: Sequence[str]) -> str:
    present = [k for k in keys if any(k in s for s in summary.values())]
    lines = ["| method | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for name, stats in summary.items():
        cells = [f"{stats[k]['mean']:.4g} ± {stats[k]['sd']:.2g}" if k in stats else "–" for k in present]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nmean ± sd over cases\n"


def box_plot(per_method: dict[str, list[dict[str, Any]]], keys: Sequence[str], path: Path) -> Path:
    """One panel per metric, one box per method."""
    present = [k for k in keys if any(isinstance(r.get(k), float) for rows in per_method.values() for r in rows)]
    fig, axes = subplots(1, max(len(present), 1), (3.2 * max(len(present), 1), 3.6))
    for ax, key in zip(axes[0], present, strict=False):
        data = [
            [r[key] for r in rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
            for rows in per_method.values()
        ]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(per_method) + 1), list(per_method), rotation=30, ha="right")
        ax.set_title(key)
    return save_figure(fig, path)


def example_plot(kind: str, examples: dict[str, tuple[str, Path, Path]], path: Path) -> Path:
    """Each method's median case, on the axial slice through the reference's center of mass.

    Segmentation: reference in grey, prediction outline in red. SR: prediction and its absolute error.
    """
    rows = 1 if kind == "seg" else 2
    fig, axes = subplots(rows, len(examples), (3.4 * len(examples), 3.4 * rows))
    for col, (name, (cid, pred_path, ref_path)) in enumerate(examples.items()):
        pred = load_image(pred_path, label=kind == "seg").data[0].numpy()
        ref = load_image(ref_path, label=kind == "seg").data[0].numpy()
        weights = ref > 0 if kind == "seg" and ref.any() else np.abs(ref)
        k = int(np.round(np.average(np.arange(ref.shape[2]), weights=weights.sum(axis=(0, 1)) + 1e-9)))
        if kind == "seg":
            axes[0][col].imshow(np.rot90(ref[:, :, k] > 0), cmap="gray")
            if pred[:, :, k].any():
                axes[0][col].contour(np.rot90(pred[:, :, k] > 0), levels=[0.5], colors="red", linewidths=1)
        else:
            vmax = float(np.percentile(ref, 99.5))
            axes[0][col].imshow(np.rot90(pred[:, :, k]), cmap="gray", vmin=0, vmax=vmax)
            axes[1][col].imshow(np.rot90(np.abs(pred - ref)[:, :, k]), cmap="inferno", vmin=0, vmax=0.25 * vmax)
            axes[1][col].set_title("|error|", fontsize=9)
        axes[0][col].set_title(f"{name}: {cid}, slice {k}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    return save_figure(fig, path)


def compare_csv(
    a: str | Path, b: str | Path, metrics: Sequence[str] | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Paired statistics between two per-case CSVs on the cases they share (difference = B - A).

    Returns (statistics per metric, skipped metric -> why). Without ``metrics``, every numeric column both files
    have is compared and those with fewer than 2 finite pairs (e.g. HD95 of a region empty everywhere) are
    skipped; a requested metric that cannot be compared is an error."""
    rows_a = {r["case_id"]: r for r in read_csv(a)}
    rows_b = {r["case_id"]: r for r in read_csv(b)}
    common = sorted(set(rows_a) & set(rows_b))
    if len(common) < 2:
        raise MeddiffError(f"{a} and {b} share {len(common)} case(s); a paired test needs at least 2")

    def numeric(rows: dict[str, dict[str, Any]]) -> set[str]:
        return {k for c in common for k, v in rows[c].items() if isinstance(v, float)}

    columns = [k for k in rows_a[common[0]] if k in numeric(rows_a) & numeric(rows_b)]
    if unknown := [m for m in metrics or () if m not in columns]:
        raise MeddiffError(f"metric(s) {', '.join(unknown)} not numeric in both CSVs")

    def value(row: dict[str, Any], m: str) -> float:
        v = row.get(m)
        return v if isinstance(v, float) else math.nan

    results, skipped = {}, {}
    for m in metrics or columns:
        a_values, b_values = [value(rows_a[c], m) for c in common], [value(rows_b[c], m) for c in common]
        finite = sum(math.isfinite(x) and math.isfinite(y) for x, y in zip(a_values, b_values, strict=True))
        if finite < 2 and not metrics:
            skipped[m] = f"{finite} finite pair(s) of {len(common)}"
            continue
        results[m] = paired_comparison(a_values, b_values)
    return results, skipped
