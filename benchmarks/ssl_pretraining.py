"""Collapse watch of a self-supervised pretraining run (issue #17): k-NN probe accuracy, teacher entropy and the
spread of the embeddings against steps, as a figure and a JSON summary.

    python benchmarks/ssl_pretraining.py --run ~/meddiff-runs/ssl --out docs/benchmarks

A resumed run logs again the steps after its last checkpoint: the last row of each step is kept. Wall time is the
sum over the run's sessions (``meddiffusion.training.read_log``), the steps repeated after a stop included.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from meddiffusion.training import read_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the `meddiff ssl pretrain --out` folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from meddiffusion.plotting import save_figure, subplots

    training, wall = read_log(args.run / "training_log.csv")
    probe, _ = read_log(args.run / "validation_log.csv")
    steps = list(training)
    fig, axes = subplots(1, 3, (12, 3.4))
    axes = axes[0]
    ax = axes[0]
    for key, name in (("knn_accuracy_teacher", "teacher"), ("knn_accuracy_student", "student")):
        ax.plot(list(probe), [r[key] for r in probe.values()], marker="o", label=name)
    ax.set(xlabel="step", ylabel="k-NN accuracy, tumour vs healthy", title="probe (labelled patches)")
    ax.legend()
    axes[1].plot(steps, [r["teacher_entropy"] for r in training.values()])
    axes[1].axhline(math.log(256), ls="--", c="grey")
    axes[1].set(xlabel="step", ylabel="nats", title="teacher output entropy (dashed: uniform)")
    axes[2].plot(steps, [r["embedding_std"] for r in training.values()])
    axes[2].set(xlabel="step", title="embedding spread (std of unit embeddings)")
    args.out.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out / "ssl_pretraining.png")
    summary = {
        "run": str(args.run),
        "steps": steps[-1],
        "wall_hours": wall / 3600,
        "probe": {str(k): {n: v for n, v in r.items() if n != "step"} for k, r in probe.items()},
        "first": training[steps[0]],
        "last": training[steps[-1]],
    }
    (args.out / "ssl_pretraining.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("steps", "wall_hours", "probe")}, indent=2))


if __name__ == "__main__":
    main()
