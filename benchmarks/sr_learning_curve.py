"""Learning curve of a super-resolution training run (issue #15): validation PSNR against steps and wall time,
read against interpolation on the same validation patches, as a figure, a JSON summary and a markdown table.

    python benchmarks/sr_learning_curve.py --run ~/meddiff-runs/sr-unet --config configs/sr_unet.yaml \
        --out docs/benchmarks

The validation PSNR is the training loop's own (``sr.train.validation``: 32 fixed patches of the config's
validation volumes, every task of the run, data range 1 in normalised units); interpolation is bicubic on the same
patches, and for residual diffusion (a config with ``data.prior``) so is the regression model it refines (a zero
residual; its predictions read back from the run's cache). It shows where training saturates; it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from meddiffusion.provenance import provenance
from meddiffusion.training import read_log


def baseline_psnr(config_path: str, run: Path, n_patches: int = 32) -> dict[str, float]:
    """PSNR of interpolation, and of the regression model residual diffusion refines, on the patches the run
    validates on (a residual run's patches come from the planes its regression predicted)."""
    from meddiffusion.sr.train import _pairs, load_prior, load_sr_config

    config = load_sr_config(config_path)
    prior = load_prior(config)
    val_set = _pairs(config, config.data.val, 12345, False, prior, prior_cache=run / "prior_cache")
    items = [val_set[i] for i in range(n_patches)]
    centre = config.data.neighbours  # conditioning channels: interpolated planes, then the regression's
    interpolated = torch.stack([(i["cond"][centre : centre + 1] + 1) / 2 for i in items])
    base = torch.stack([(i["cond"][-1:] + 1) / 2 for i in items]) if prior is not None else interpolated
    high = torch.stack([i["target"] for i in items]) / config.data.residual_scale + base  # target: over the base
    out = {"interpolation": float(10 * np.log10(1.0 / float(((high - interpolated) ** 2).mean())))}
    if prior is not None:
        out["regression"] = float(10 * np.log10(1.0 / float(((high - base) ** 2).mean())))
    return out


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
    baselines = baseline_psnr(args.config, args.run)
    baseline = baselines["interpolation"]
    steps = list(validation)
    hours = [training[max(s for s in training if s <= step)]["elapsed_s"] / 3600 for step in steps]
    psnr = [validation[s]["psnr"] for s in steps]
    fig, axes = subplots(1, 2, (10, 3.4))
    for ax, x, label in zip(axes[0], (steps, hours), ("step", "training hours (2 CPU cores)"), strict=True):
        ax.plot(x, psnr, marker="o", label=args.run.name)
        for (name, value), colour in zip(baselines.items(), ("grey", "black"), strict=False):
            ax.axhline(value, ls="--", c=colour, label=name)
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
        **{f"{k}_psnr": v for k, v in baselines.items() if k != "interpolation"},
        "curve": [{"step": s, "hours": h, "psnr": p} for s, h, p in zip(steps, hours, psnr, strict=True)],
    }
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    over = " | ".join(f"over {k} (dB)" for k in baselines)
    print(f"| step | training hours | validation PSNR (dB) | {over} |\n|---|---|---|{'---|' * len(baselines)}")
    for s, h, p in zip(steps, hours, psnr, strict=True):
        print(f"| {s:,} | {h:.2f} | {p:.2f} | " + " | ".join(f"{p - v:+.2f}" for v in baselines.values()) + " |")


if __name__ == "__main__":
    main()
