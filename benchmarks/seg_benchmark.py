"""Segmentation benchmark: cross-validation over the real labelled cases, ablations, speed and memory.

    python benchmarks/seg_benchmark.py [--runs RUNS] [--steps 500] [--folds 5] [--out docs/benchmarks]
    python benchmarks/seg_benchmark.py --only-timing
    python benchmarks/seg_benchmark.py --inference WEIGHTS --val-cases ID ...   # inference settings: seconds, Dice
    python benchmarks/seg_benchmark.py --runs RUNS --finished-only --no-timing --prefix seg_cv20_peers \
        --include-rows docs/benchmarks/seg_cv20_per_case.csv docs/benchmarks/seg_nnunet_per_case.csv
    python benchmarks/seg_benchmark.py --runs RUNS --finished-only --no-timing --prefix seg_cv20_unet_equal_time \
        --rename unet=unet_8400 --reference plain --include-rows docs/benchmarks/seg_cv20_ablation_per_case.csv

Cross-validation (``meddiff seg ablate``, continued if ``--runs`` holds finished folds): every variant of
``segmentation/variants.py`` on the same k folds (by patient) and seeds, configs/seg_dualpath_proposal.yaml with
``--steps`` training steps per fold; metrics on each held-out case on its original grid. Writes
``seg_cv_table.md`` and ``seg_cv_per_case.csv`` (``--prefix`` renames them). ``--include-rows`` adds the rows of
methods and folds scored elsewhere (the full model's committed rows, nnU-Net's), so that every method of the same
folds is in one table, paired with the full model over the same patients; regions a case's label convention does
not delineate are undefined in every row, also in rows scored before that rule. ``--rename`` tabulates a run's
variant under another name (the U-Net trained for more steps beside its 2,000-step rows); ``--reference`` is the
variant the others are paired with.

Timing (this machine, 2 threads, nothing else running): seconds per training step (the default recipe, the
proposal's and the U-Net, each with its config's batch and patch, 2.5D, four modalities; loss reweighting aside) and
per predicted 240 x 240 x 155 volume with the shipped weights, and each measurement's peak resident memory (its own
process). Writes ``seg_timing.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "seg_dualpath.yaml"
#: the ablation's reference: the proposal's recipe, from which each variant removes (or adds) one part
PROPOSAL = ROOT / "configs" / "seg_dualpath_proposal.yaml"
PAT0006 = ROOT.parent / "shared" / "data" / "brats2015_deepmedic" / "brats_2013_pat0006_1"


def included_rows(paths: list[Path], rows: list[dict]) -> list[dict]:
    """Rows of ``paths`` (per-case CSVs) whose (variant, fold) this run does not hold, the first file's first."""
    from meddiffusion.eval.report import read_csv

    held = {(r["variant"], r["fold"]) for r in rows}
    out = []
    for path in paths:
        for r in read_csv(path):  # numbers come back as floats: the fold as 0.0
            r["fold"] = int(r["fold"])
            if (r["variant"], r["fold"]) not in held:
                out.append(r)
        held |= {(r["variant"], r["fold"]) for r in out}
    return out


def cross_validation(
    runs: Path,
    steps: int,
    folds: int,
    out: Path,
    finished_only: bool,
    include: list[Path],
    prefix: str,
    rename: dict[str, str],
    reference: str,
) -> None:
    from meddiffusion.app.ablation import by_variant, cross_validate, finished_rows, summary_table
    from meddiffusion.data.layouts import read_dataset
    from meddiffusion.eval.cases import undefine_undelineated
    from meddiffusion.eval.report import write_csv
    from meddiffusion.segmentation.train import load_seg_config
    from meddiffusion.segmentation.variants import VARIANTS

    config = load_seg_config(PROPOSAL, {"train.steps": steps})
    # --finished-only: report the folds that have finished, train nothing
    rows = finished_rows(runs) if finished_only else cross_validate(config, runs, list(VARIANTS), folds)
    rows = [{**r, "variant": rename.get(r["variant"], r["variant"])} for r in rows]
    conventions = {c.case_id: c.convention for c in read_dataset(ROOT / "configs" / "seg_cases.csv")}
    rows = by_variant(
        [undefine_undelineated(r, conventions[r["case_id"]]) for r in [*included_rows(include, rows), *rows]]
    )
    write_csv(rows, out / f"{prefix}_per_case.csv")
    table = summary_table(rows, reference)
    (out / f"{prefix}_table.md").write_text(table)
    print(table)


def _train_steps(name: str, path: Path, model: str, queue) -> None:
    import torch

    from meddiffusion.data.layouts import read_dataset
    from meddiffusion.data.prepare import load_case
    from meddiffusion.segmentation.data import SegPatches
    from meddiffusion.segmentation.models import build_from_weights_config
    from meddiffusion.segmentation.train import load_seg_config, make_loss, weights_config

    torch.set_num_threads(2)
    config = load_seg_config(path, {"network.model": model})
    case = read_dataset(config.data.data)[-1]  # a four-modality BraTS 2018 case
    patch = config.data.patch_size
    patches = SegPatches([load_case(case, config.data.modalities, None)], patch, 1, 0.5, True)
    net = build_from_weights_config(weights_config(config))
    loss_fn, _ = make_loss(config.loss, config.network.output)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    times = []
    for step in range(13):
        started = time.perf_counter()
        items = [patches[step * 8 + i] for i in range(8)]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        loss, _ = loss_fn(net, batch, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"model": name, "s_per_step": sum(times[3:]) / len(times[3:]), "peak_rss_mb": peak})


def _predict(queue) -> None:
    import torch

    from meddiffusion.io import load_subject
    from meddiffusion.segmentation.predict import Segmenter

    torch.set_num_threads(2)
    subject = load_subject(
        {"flair": PAT0006 / "Flair_subtrMeanDivStd.nii.gz", "t1ce": PAT0006 / "T1c_subtrMeanDivStd.nii.gz"}
    )
    segmenter = Segmenter.from_pretrained()
    started = time.perf_counter()
    segmenter.predict(subject)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"predict_s_per_volume": seconds, "shape": list(subject.spatial_shape), "peak_rss_mb": peak})


#: the inference settings compared (segmentation/predict.py INFERENCE): tiling, overlap, test-time flips
SETTINGS = {
    "patch, overlap 0.5": {"window": "patch", "overlap": 0.5, "mirror": False},
    "patch, overlap 0.25": {"window": "patch", "overlap": 0.25, "mirror": False},
    "plane": {"window": "plane", "overlap": 0.25, "mirror": False},
    "plane, flips": {"window": "plane", "overlap": 0.25, "mirror": True},
}


def inference_settings(weights: Path, data: Path, cases: list[str], out: Path) -> dict:
    """Seconds and Dice (post-processed, BraTS 2021 regions) of the weights on ``cases`` for each inference
    setting (``SETTINGS``): what the tiling, overlap and flips cost and give. Run on validation cases, so the
    default it chooses is not chosen on test cases."""
    import torch

    from meddiffusion.data.layouts import read_dataset
    from meddiffusion.eval.cases import reference_label, score_case
    from meddiffusion.segmentation.predict import Segmenter

    torch.set_num_threads(2)
    segmenter = Segmenter.from_pretrained(weights)
    by_id = {c.case_id: c for c in read_dataset(data)}
    results: dict = {"weights": str(weights), "cases": cases, "machine": platform.machine(), "settings": {}}
    for name, setting in SETTINGS.items():
        segmenter.config = {**segmenter.config, "inference": setting}
        rows = []
        for case_id in cases:
            subject, label = reference_label(by_id[case_id], segmenter.modalities)
            started = time.perf_counter()
            pred = segmenter.predict(subject)
            seconds = time.perf_counter() - started
            metrics = score_case(pred, label, tuple(subject[segmenter.modalities[0]].spacing), by_id[case_id])
            rows.append(
                {
                    "case_id": case_id,
                    "seconds": seconds,
                    "shape": list(subject.spatial_shape),
                    **{k: metrics[k] for k in ("WT_dice", "TC_dice", "ET_dice", "WT_hd95")},
                }
            )
            print(
                f"{name}: {case_id} {seconds:.1f} s WT {metrics['WT_dice']:.3f} "
                f"TC {metrics['TC_dice']:.3f} ET {metrics['ET_dice']:.3f}",
                flush=True,
            )
        results["settings"][name] = {"setting": setting, "cases": rows}
    (out / "seg_inference.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _in_child(target, *args) -> dict:
    """Run in a fresh process so that its peak memory is its own."""
    queue = mp.get_context("spawn").Queue()
    process = mp.get_context("spawn").Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def timing(out: Path) -> None:
    results = {
        "machine": f"{platform.processor() or platform.machine()}, 2 threads",
        "training": [
            _in_child(_train_steps, *run)
            for run in (
                ("dualpath", CONFIG, "dualpath"),
                ("dualpath, proposal", PROPOSAL, "dualpath"),
                ("unet", CONFIG, "unet"),
            )
        ],
        "prediction": _in_child(_predict),
    }
    (out / "seg_timing.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=str(ROOT / "benchmark-runs" / "seg-cv"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--only-timing", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--finished-only", action="store_true", help="tabulate finished folds only; train nothing")
    parser.add_argument("--include-rows", nargs="+", type=Path, default=[], help="per-case CSVs scored elsewhere")
    parser.add_argument("--prefix", default="seg_cv", help="names of the table and per-case files")
    parser.add_argument(
        "--rename",
        nargs="+",
        default=[],
        metavar="OLD=NEW",
        help="the runs' variants under other names (a variant trained longer, beside its committed rows)",
    )
    parser.add_argument("--reference", default="full", help="the variant every other is paired with")
    parser.add_argument("--inference", metavar="WEIGHTS", help="only: each inference setting's seconds and Dice")
    parser.add_argument("--val-cases", nargs="+", default=[], help="validation case ids of configs/seg_cases.csv")
    args = parser.parse_args()
    if bad := [r for r in args.rename if "=" not in r]:
        parser.error(f"--rename takes OLD=NEW, not {', '.join(bad)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.inference:
        inference_settings(Path(args.inference), ROOT / "configs" / "seg_cases.csv", args.val_cases, out)
        return
    if not args.only_timing:
        cross_validation(
            Path(args.runs),
            args.steps,
            args.folds,
            out,
            args.finished_only,
            args.include_rows,
            args.prefix,
            dict(r.split("=", 1) for r in args.rename),
            args.reference,
        )
    if not args.no_timing:
        timing(out)


if __name__ == "__main__":
    main()
