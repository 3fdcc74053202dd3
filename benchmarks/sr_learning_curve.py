"""Learning curve of a super-resolution training run (issue #15): validation PSNR against steps and wall time,
read against interpolation on the same validation patches, as a figure, a JSON summary and a markdown table.

    python benchmarks/sr_learning_curve.py --run ~/meddiff-runs/sr-unet --config configs/sr_unet.yaml \
        --out docs/benchmarks

The validation PSNR is the training loop's own (``sr.train.validation``: 32 fixed patches of the config's
validation volumes, every task of the run, data range 1 in normalised units); interpolation is a zero residual on
the same patches. It shows where training saturates; it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from meddiffusion.provenance import provenance
from meddiffusion.training import read_log


def interpolation_psnr(config_path: str, n_patches: int = 32) -> float:
    """PSNR of interpolation alone (a zero residual) on the patches the run validates on."""
    from meddiffusion.sr.train import _pairs, load_sr_config

    config = load_sr_config(config_path)
    val_set = _pairs(config, config.data.val, seed=12345, augment=False, prior=None)
    target = torch.stack([val_set[i]["target"] for i in range(n_patches)]) / config.data.residual_scale
    return float(10 * np.log10(1.0 / float((target**2).mean())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the `meddiff sr train --out` folder")
    parser.add_argument("--config", required=True, help="the run's training config (its validation volumes)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from meddiffusion.plotting import save_figure, subplots

    made = provenance()
    training, wall = read_log(args.run / "training_log.csv")
    validation, _ = read_log(args.run / "validation_log.csv")
    baseline = interpolation_psnr(args.config)
    steps = list(validation)
    hours = [training[max(s for s in training if s <= step)]["elapsed_s"] / 3600 for step in steps]
    psnr = [validation[s]["psnr"] for s in steps]
    fig, axes = subplots(1, 2, (10, 3.4))
    for ax, x, label in zip(axes[0], (steps, hours), ("step", "training hours (2 CPU cores)"), strict=True):
        ax.plot(x, psnr, marker="o", label=args.run.name)
        ax.axhline(baseline, ls="--", c="grey", label="interpolation")
        ax.set(xlabel=label, ylabel="validation PSNR (dB)")
        ax.legend()
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.run.name}_learning_curve"
    save_figure(fig, args.out / f"{name}.png")
    summary = {
        "provenance": made,
        "run": str(args.run),
        "steps": list(training)[-1],
        "wall_hours": wall / 3600,
        "interpolation_psnr": baseline,
        "curve": [{"step": s, "hours": h, "psnr": p} for s, h, p in zip(steps, hours, psnr, strict=True)],
    }
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| step | training hours | validation PSNR (dB) | over interpolation (dB) |\n|---|---|---|---|")
    for s, h, p in zip(steps, hours, psnr, strict=True):
        print(f"| {s:,} | {h:.2f} | {p:.2f} | {p - baseline:+.2f} |")


if __name__ == "__main__":
    main()
