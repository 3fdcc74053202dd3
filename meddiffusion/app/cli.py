"""``meddiff``: one command, thin subcommands. Argument parsing and error reporting only; the work is done
by the package modules. A ``MeddiffError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from meddiffusion import __version__
from meddiffusion.errors import MeddiffError
from meddiffusion.paths import check_input_file, check_output, weights_folder
from meddiffusion.provenance import code_state
from meddiffusion.serialise import json_text
from meddiffusion.sr import DEFAULT_METHOD as SR_DEFAULT_METHOD
from meddiffusion.sr import METHODS as SR_METHODS

Handler = Callable[[argparse.Namespace], int]


def _demo(args: argparse.Namespace) -> int:
    from meddiffusion.app.demo import run_demo

    metrics = run_demo(
        args.out,
        force=args.force,
        modality=args.modality,
        scale=args.scale,
        slices=args.slices,
        steps=args.steps,
        samples=args.samples,
        seed=args.seed,
        device=args.device,
    )
    for name, m in metrics.items():
        print(f"{name:>10}: PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  HFEN {m['hfen']:.4f}")
    print(f"wrote {args.out}/ (NIfTI volumes, panel.png, metrics.json, provenance.json)")
    return 0


def _info(args: argparse.Namespace) -> int:
    for path in args.files:
        check_input_file(path)
    from meddiffusion.info import describe, format_info

    for path in args.files:
        info = describe(path, label=True if args.label else None)
        print(json_text(info) if args.json else format_info(info))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from meddiffusion.data.check import check_dataset

    n_cases, problems = check_dataset(args.folder, args.layout)
    for problem in problems:
        print(problem)
    print(f"{n_cases} cases, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def _data_split(args: argparse.Namespace) -> int:
    from meddiffusion.data import kfold_splits, read_dataset, train_test_split

    ids = [c.case_id for c in read_dataset(args.folder, args.layout)]
    if args.folds:
        payload = [
            {"fold": i, "train": tr, "test": te} for i, (tr, te) in enumerate(kfold_splits(ids, args.folds, args.seed))
        ]
    else:
        train, test = train_test_split(ids, args.test_fraction, args.seed)
        payload = {"train": train, "test": test}
    print(json_text({"seed": args.seed, "splits": payload}))
    return 0


#: command-line flag -> the config key it overrides (the same for every trainer that has the flag)
FLAG_KEYS = {
    "data": "data.data",
    "init": "init",
    "model": "network.model",
    "steps": "train.steps",
    "mixed_precision": "train.mixed_precision",
    "threads": "train.threads",
}
#: the trainers' --threads help: one run is fastest with every core, several independent runs gain from one each
THREADS_HELP = (
    "override train.threads (torch threads; on 2 cores one run is fastest with 2, but two 1-thread runs side by side"
    " do more steps an hour between them)"
)
#: flags that name files: relative to the working directory, so made absolute before they reach a config
PATH_FLAGS = ("data", "init")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """``section.key`` config overrides from the flags a trainer's command line was given (paths made absolute:
    they are relative to the working directory, not to the config file)."""
    overrides: dict[str, object] = {}
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None and flag == "init":  # a weights folder, or the name of shipped weights
            value = str(weights_folder(value).resolve())
        elif value is not None and flag in PATH_FLAGS:
            value = [str(Path(v).resolve()) for v in value] if isinstance(value, list) else str(Path(value).resolve())
        if value is not None:
            overrides[key] = value
    return overrides


def _train_with(load, run, args: argparse.Namespace) -> int:
    """A trainer's command: its config (file + flags) -> ``run`` into ``--out`` (resumed, stopped as asked)."""
    folder = run(load(args.config, _overrides(args)), Path(args.out), resume=args.resume, stop_at=args.stop_at)
    print(f"wrote {folder}")
    return 0


def _sr_train(args: argparse.Namespace) -> int:
    from meddiffusion.sr.train import load_sr_config, run_training

    return _train_with(load_sr_config, run_training, args)


def _sr_upscale(args: argparse.Namespace) -> int:
    check_input_file(args.input)
    check_output(args.output, args.force)
    from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions
    from meddiffusion.sr.run import upscale_file

    options = UpscaleOptions(
        scale=args.scale,
        axis=args.axis,
        steps=args.steps,
        samples=args.samples,
        sampler=args.sampler,
        data_consistency=not args.no_data_consistency,
        slice_axis=args.slice_axis,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    pipeline = SRPipeline.for_method(args.method, args.weights, args.device)
    result = upscale_file(args.input, args.output, pipeline, options, force=args.force)
    print(f"wrote {args.output} (shape {' x '.join(map(str, result['image'].spatial_shape))})")
    return 0


def _sr_degrade(args: argparse.Namespace) -> int:
    check_input_file(args.input)
    check_output(args.output, args.force)
    from meddiffusion.sr.run import degrade_file

    degrade_file(args.input, args.output, args.scale, args.axis, args.slice_axis, force=args.force)
    print(f"wrote {args.output}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """``eval sr`` / ``eval seg``: files -> JSON on stdout; folders (one per method) -> report in --out."""
    for path in [*args.pred, args.ref]:
        if not Path(path).is_dir():
            check_input_file(path)
    from meddiffusion.eval.report import evaluate_folders, evaluate_seg_files, evaluate_sr_files

    convention = getattr(args, "convention", None)  # seg only; "binary" = foreground as one region
    convention = None if convention == "binary" else convention
    if all(Path(p).is_dir() for p in args.pred) and Path(args.ref).is_dir():
        if not args.out:
            raise MeddiffError("folder evaluation needs --out for the report")
        summary = evaluate_folders(args.kind, args.pred, args.ref, args.out, args.names, convention, force=args.force)
        print(json_text(summary))
        return 0
    if len(args.pred) != 1:
        raise MeddiffError("give one prediction file, or prediction folders with a reference folder")
    if args.kind == "sr":
        metrics = evaluate_sr_files(args.pred[0], args.ref, args.mask, args.data_range)
    else:
        metrics = evaluate_seg_files(args.pred[0], args.ref, convention)
    print(json_text(metrics))
    return 0


def _eval_compare(args: argparse.Namespace) -> int:
    from meddiffusion.eval.report import compare_csv

    results, skipped = compare_csv(args.a, args.b, args.metrics)
    print(json_text(results))
    for metric, why in skipped.items():
        print(f"meddiff: skipped {metric}: {why}", file=sys.stderr)
    return 0


def _seg_config(args: argparse.Namespace):
    from meddiffusion.segmentation.train import load_seg_config

    overrides = _overrides(args)
    if getattr(args, "synthetic", None):
        overrides["data.synthetic"] = [str(Path(p).resolve()) for p in args.synthetic]
        overrides["data.synthetic_ratio"] = args.synthetic_ratio
    elif getattr(args, "synthetic_ratio", None):
        raise MeddiffError("--synthetic-ratio needs --synthetic DIR")
    if getattr(args, "val_cases", None):
        overrides["data.val_cases"] = args.val_cases
    return load_seg_config(args.config, overrides)


def _seg_train(args: argparse.Namespace) -> int:
    from meddiffusion.segmentation.train import run_training

    folder = run_training(_seg_config(args), Path(args.out), resume=args.resume, stop_at=args.stop_at)
    print(f"wrote {folder}")
    return 0


def _seg_predict(args: argparse.Namespace) -> int:
    case_dir, output = (None, args.output) if args.case is None else (args.case, args.output)
    if args.output is None:  # one positional: the output, with the modalities given as flags
        if Path(args.case).is_dir():
            raise MeddiffError("give the output label map after the case folder: seg predict CASE_DIR OUTPUT")
        case_dir, output = None, args.case
    files = {m: getattr(args, m) for m in ("t1", "t1ce", "t2", "flair")}
    _check_case_inputs(case_dir, files)
    check_output(output, args.force)
    from meddiffusion.data.layouts import input_case
    from meddiffusion.segmentation.predict import predict_case

    labels = predict_case(
        input_case(case_dir, files),
        output,
        args.weights,
        force=args.force,
        clean=not args.no_postprocess,
        flips=args.flips,
    )
    print(f"wrote {output} ({int((labels > 0).sum())} tumour voxels)")
    return 0


def _check_case_inputs(case_dir: str | None, files: dict[str, str | None]) -> None:
    """The quick checks of a case given as a folder and/or one file per modality."""
    if case_dir is not None and not Path(case_dir).is_dir():
        raise MeddiffError("case folder not found", case_dir)
    for path in files.values():
        if path:
            check_input_file(path)


def _seg_ablate(args: argparse.Namespace) -> int:
    from meddiffusion.app.ablation import cross_validate, finished, finished_rows, idle_variants, summary_table
    from meddiffusion.io import check_output, write_text
    from meddiffusion.segmentation.variants import VARIANTS

    out = Path(args.out)
    summary = out / "summary.md"
    config = _seg_config(args)
    variants = args.variants
    if variants is None:  # every variant that changes this config: named ones that do not are refused below
        idle = idle_variants(config, list(VARIANTS))
        variants = [v for v in VARIANTS if v not in idle]
        if idle:
            print(f"skipping {', '.join(idle)}: this config already lacks what they remove")
    asked = [(v, k) for v in variants for k in (args.run_folds or range(args.folds))]
    if all(finished(out, v, k) for v, k in asked):  # nothing left for this call:
        check_output(summary, args.force)  # a finished run's summary is redone only with --force
    rows = cross_validate(config, out, variants, args.folds, args.seed, args.run_folds)
    print(summary_table(rows))
    done, total = len({(r["variant"], r["fold"]) for r in rows}), len(variants) * args.folds
    if done < total:  # the summary is written when every fold of the asked variants is in
        print(f"{done} of {total} variant folds finished; {summary} is written with the last")
        return 0
    write_text(summary_table(finished_rows(out)), summary, force=True)  # every variant the folder has finished
    return 0


def _seg_postprocessing(args: argparse.Namespace) -> int:
    from meddiffusion.app.postprocessing import choose_postprocessing
    from meddiffusion.io import check_output

    check_output(args.out, args.force)
    result = choose_postprocessing(args.cv, args.variant, args.out, args.weights, args.force)
    for rule, mean in result["rules"].items():
        print(f"min_fraction {rule}: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items() if k != "cases"))
    held_out = result["leave_fold_out"]["summary"]
    print(
        f"chosen: min_fraction {result['chosen']['min_fraction']}; each fold under the rule chosen on the others: "
        + ", ".join(f"{k} {v:.3f}" for k, v in held_out.items() if k != "cases")
    )
    print(f"wrote {args.out}" + (f"; recorded the rule in {args.weights}" if args.weights else ""))
    return 0


def _synth_train(args: argparse.Namespace) -> int:
    from meddiffusion.synth.train import load_synth_config, run_training

    return _train_with(load_synth_config, run_training, args)


def _synth_lesion(args: argparse.Namespace) -> int:
    center = None
    if args.center:
        try:
            center = tuple(int(v) for v in args.center.split(","))
        except ValueError:
            center = ()
        if len(center) != 3:
            raise MeddiffError(f"--center takes three voxel indices X,Y,Z, got {args.center!r}")
    files = {m: getattr(args, m) for m in ("t1", "t1ce", "t2", "flair")}
    if args.input is not None and not Path(args.input).is_dir():
        check_input_file(args.input)
    _check_case_inputs(args.input if args.input and Path(args.input).is_dir() else None, files)
    if args.exclude_label:
        check_input_file(args.exclude_label)
    check_output(args.out_label, args.force)
    from meddiffusion.app.lesion import describe_outputs, lesion_case, tumour_to_avoid
    from meddiffusion.synth.cases import modality_outputs, synthesize_case
    from meddiffusion.synth.pipeline import LesionRequest

    case = lesion_case(args.input, files, args.modality)
    avoid = tumour_to_avoid(case, args.exclude_label)
    request = LesionRequest(args.volume_ml, args.foci, center, args.seed, args.steps)
    result = synthesize_case(case, args.out_image, args.out_label, request, args.weights, args.force, avoid)
    print(f"painted: {describe_outputs(modality_outputs(args.out_image, sorted(result.images)))}")
    print(f"lesion {result.info['measured_volume_ml']:.2f} mL (requested {args.volume_ml:g}); wrote {args.out_label}")
    return 0


def _synth_cases(args: argparse.Namespace) -> int:
    from meddiffusion.synth.cases import generate_cases, load_recipe

    overrides = {"weights": args.weights} if args.weights else {}
    written = generate_cases(load_recipe(args.recipe, overrides), args.n, args.out)
    print(f"wrote {len(written)} new case(s) to {args.out}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from meddiffusion.app.study import PRESETS, run_study

    preset = PRESETS["quick" if args.quick else "full"]
    chosen = {k: getattr(args, k) for k in ("seeds", "folds", "ratios") if getattr(args, k) is not None}
    preset = dataclasses.replace(preset, **chosen)
    report = run_study(args.data, args.recipe, args.out, preset, seg_config=args.seg_config, force=args.force)
    print(report.read_text())
    print(f"wrote {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meddiff", description="Diffusion-based MRI super-resolution and augmentation."
    )
    parser.add_argument("--version", action="version", version=f"meddiffusion {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="super-resolve the embedded real MRI and write NIfTI + PNG panel")
    demo.add_argument("--out", default="meddiff-demo", help="output folder (default: meddiff-demo)")
    demo.add_argument("--modality", default="t1ce", choices=["t1", "t1ce", "t2", "flair"])
    demo.add_argument("--scale", type=int, default=4, choices=[2, 4])
    demo.add_argument("--slices", type=int, default=24, help="slab thickness through the tumour (slices)")
    demo.add_argument("--steps", type=int, default=1)
    demo.add_argument("--samples", type=int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--force", action="store_true", help="overwrite an earlier demo's outputs")
    demo.set_defaults(handler=_demo)

    info = commands.add_parser("info", help="shape, spacing, orientation, intensities; labels with volumes")
    info.add_argument("files", nargs="+")
    info.add_argument("--label", action="store_true", help="treat the file as a label map")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)

    data = commands.add_parser("data", help="data-set folders").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a data-set folder; one line per problem")
    check.add_argument("folder")
    check.add_argument("--layout", choices=["brats2021", "brats2023", "nnunet", "list"])
    check.set_defaults(handler=_data_check)
    split = data.add_parser("split", help="patient-level train/test split or k folds (JSON)")
    split.add_argument("folder")
    split.add_argument("--layout", choices=["brats2021", "brats2023", "nnunet", "list"])
    split.add_argument("--test-fraction", type=float, default=0.2)
    split.add_argument("--folds", type=int)
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(handler=_data_split)

    sr = commands.add_parser("sr", help="MRI super-resolution").add_subparsers(dest="sr_command", required=True)
    up = sr.add_parser("upscale", help="super-resolve a volume")
    up.add_argument("input")
    up.add_argument("output", help="output NIfTI (.nii.gz); OUTPUT.json records how it was made")
    up.add_argument("--scale", type=int, default=2, choices=[2, 4], help="upscaling factor (default: 2)")
    up.add_argument(
        "--axis",
        default="inplane",
        choices=["inplane", "through"],
        help="inplane: k-space crop on both in-plane axes; through: thick slices (see README)",
    )
    up.add_argument(
        "--method",
        choices=SR_METHODS,
        help=f"default: the --weights' own method, else {SR_DEFAULT_METHOD} (best on validation volumes)",
    )
    up.add_argument(
        "--steps",
        type=int,
        default=1,
        help="diffusion: sampler steps = network evaluations per plane (default 1, see docs/benchmarks.md)",
    )
    up.add_argument(
        "--samples", type=int, default=1, help="diffusion: K > 1 averages K samples and writes OUTPUT_std.nii.gz"
    )
    up.add_argument("--sampler", default="ddim", choices=["ddim", "dpm++", "ddpm"])
    up.add_argument("--no-data-consistency", action="store_true", help="skip the projection onto the measured data")
    up.add_argument(
        "--slice-axis", type=int, choices=[0, 1, 2], help="default: 2 in-plane, thickest axis through-plane"
    )
    up.add_argument("--weights", help="weights folder (default: the shipped weights of --method)")
    up.add_argument("--device", default="cpu")
    up.add_argument("--batch-size", type=int, default=8)
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--force", action="store_true")
    up.set_defaults(handler=_sr_upscale)
    deg = sr.add_parser("degrade", help="make a low-resolution volume (the training degradation)")
    deg.add_argument("input")
    deg.add_argument("output")
    deg.add_argument("--scale", type=int, required=True)
    deg.add_argument("--axis", default="inplane", choices=["inplane", "through"])
    deg.add_argument("--slice-axis", type=int, choices=[0, 1, 2])
    deg.add_argument("--force", action="store_true")
    deg.set_defaults(handler=_sr_degrade)
    train = sr.add_parser("train", help="train a super-resolution model from a YAML config")
    train.add_argument("--config", required=True, help="training config (YAML), e.g. configs/sr_diffusion.yaml")
    train.add_argument("--out", required=True, help="run folder (checkpoints, logs, weights/)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.add_argument("--steps", type=int, help="override train.steps")
    train.add_argument("--stop-at", type=int, help="end this run at that step (checkpointed); continue with --resume")
    train.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="override train.mixed_precision")
    train.add_argument("--threads", type=int, help=THREADS_HELP)
    train.set_defaults(handler=_sr_train)

    ev = commands.add_parser("eval", help="metrics, reports, paired statistics").add_subparsers(
        dest="eval_command", required=True
    )
    for kind in ("sr", "seg"):
        p = ev.add_parser(kind, help=f"evaluate {kind} predictions (files: JSON on stdout; folders: report)")
        p.add_argument("--pred", nargs="+", required=True, help="prediction file, or one folder per method")
        p.add_argument("--ref", required=True, help="reference file or folder")
        p.add_argument("--out", help="report folder (folder mode)")
        p.add_argument("--names", nargs="+", help="method names for the prediction folders")
        p.add_argument("--force", action="store_true")
        if kind == "sr":
            p.add_argument("--mask", help="evaluate inside this mask")
            p.add_argument("--data-range", type=float, help="default: reference max - min (inside the mask)")
        else:
            p.add_argument("--convention", default="brats2021", choices=["brats2021", "brats2023", "binary"])
        p.set_defaults(handler=_eval, kind=kind)
    cmp_ = ev.add_parser("compare", help="paired statistics between two per-case CSVs (B - A)")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    cmp_.add_argument("--metrics", nargs="+")
    cmp_.set_defaults(handler=_eval_compare)

    _add_seg(commands)
    _add_ssl(commands)
    _add_fl(commands)
    _add_synth(commands)
    study = commands.add_parser("study", help="does adding synthetic rare cases improve segmentation? (end to end)")
    study.add_argument("--data", required=True, help="real labelled data set (folder or CSV list)")
    study.add_argument("--recipe", required=True, help="synthesis recipe (YAML); its source is replaced by --data")
    study.add_argument("--out", required=True, help="study folder (resumes)")
    study.add_argument("--seeds", type=int, help="segmenter seeds per arm (default: 2 quick, 3 full)")
    study.add_argument("--folds", type=int, help="folds by patient, every case tested once (default: 2 quick, 5 full)")
    study.add_argument("--ratios", type=float, nargs="+", help="synthetic fractions, one arm each (full: 0.25 0.5)")
    study.add_argument("--quick", action="store_true", help="a smoke run: two folds, short training")
    study.add_argument("--seg-config", help="segmenter YAML config (e.g. configs/seg_unet.yaml)")
    study.add_argument("--force", action="store_true", help="redo the report of a finished study")
    study.set_defaults(handler=_study)
    return parser


def _add_seg(commands) -> None:
    from meddiffusion.segmentation.variants import VARIANTS

    seg = commands.add_parser("seg", help="tumour segmentation (MONAI U-Net, dual-path network, SwinUNETR)")
    sub = seg.add_subparsers(dest="seg_command", required=True)

    def data_flags(p: argparse.ArgumentParser, data_required: bool) -> None:
        p.add_argument("--data", required=data_required, help="data set: BraTS/nnU-Net folder or CSV list")
        p.add_argument("--config", help="YAML config (defaults: segmentation/train.py; e.g. configs/seg_unet.yaml)")
        p.add_argument("--model", choices=["dualpath", "unet", "swinunetr"], help="override network.model")
        p.add_argument("--steps", type=int, help="override train.steps")
        p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="override train.mixed_precision")
        p.add_argument("--threads", type=int, help=THREADS_HELP)
        p.add_argument("--out", required=True, help="run folder")

    train = sub.add_parser("train", help="train a segmenter on a data set (+ synthetic cases)")
    data_flags(train, data_required=False)
    train.add_argument("--synthetic", nargs="+", help="synthetic data-set folder(s) mixed into training")
    train.add_argument("--synthetic-ratio", type=float, default=0.0, help="fraction of patches from --synthetic")
    train.add_argument("--val-cases", nargs="+", help="case ids held out for validation and the best checkpoint")
    train.add_argument(
        "--init", help="start from a pretrained encoder: an `ssl pretrain` weights folder, or ssl-dualpath (shipped)"
    )
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.add_argument("--stop-at", type=int, help="end this run at that step (checkpointed); continue with --resume")
    train.set_defaults(handler=_seg_train)

    predict = sub.add_parser("predict", help="segment a case into a BraTS 2021 label map")
    predict.add_argument("case", metavar="CASE_DIR", help="case folder (BraTS 2021/2023 naming); omit with flags")
    predict.add_argument("output", nargs="?", metavar="OUTPUT", help="label map (.nii.gz); OUTPUT.json records it")
    for m in ("t1", "t1ce", "t2", "flair"):
        predict.add_argument(f"--{m}", help=f"{m} image (instead of, or over, the case folder's)")
    predict.add_argument("--weights", help="weights folder or shipped name (default: seg-unet; seg-dualpath)")
    predict.add_argument(
        "--no-postprocess", action="store_true", help="keep every tumour component (the weights' rule drops small ones)"
    )
    predict.add_argument("--flips", action="store_true", help="average over the in-plane flips (better TC/ET, 3x time)")
    predict.add_argument("--force", action="store_true")
    predict.set_defaults(handler=_seg_predict)

    ablate = sub.add_parser("ablate", help="cross-validate the full model, its ablations and baselines")
    data_flags(ablate, data_required=True)
    ablate.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), help="default: every variant that changes the config"
    )
    ablate.add_argument("--folds", type=int, default=5)
    ablate.add_argument(
        "--fold", type=int, nargs="+", dest="run_folds", help="train only these folds now (0-based); run again for more"
    )
    ablate.add_argument("--seed", type=int, default=0)
    ablate.add_argument("--force", action="store_true", help="redo the summary of a finished run")
    ablate.set_defaults(handler=_seg_ablate)

    post = sub.add_parser(
        "postprocessing", help="choose the post-processing rule on a cross-validation's out-of-fold predictions"
    )
    post.add_argument("cv", metavar="CV_DIR", help="a `seg ablate --out` folder")
    post.add_argument("--variant", default="full", help="whose folds (default: full)")
    post.add_argument("--out", required=True, help="report (JSON): every rule's means, the choice, leave-fold-out rows")
    post.add_argument("--weights", help="record the chosen rule in this weights folder's config (seg predict uses it)")
    post.add_argument("--force", action="store_true", help="overwrite the report / replace a recorded rule")
    post.set_defaults(handler=_seg_postprocessing)


def _ssl_pretrain(args: argparse.Namespace) -> int:
    from meddiffusion.segmentation.pretrain import load_ssl_config, run_pretraining

    return _train_with(load_ssl_config, run_pretraining, args)


def _add_ssl(commands) -> None:
    ssl = commands.add_parser("ssl", help="self-supervised pretraining of the segmentation encoder (DINO-style)")
    sub = ssl.add_subparsers(dest="ssl_command", required=True)
    pretrain = sub.add_parser("pretrain", help="pretrain the dual-path encoder on unlabelled MRI (labels ignored)")
    pretrain.add_argument("--data", nargs="+", help="image files, case folders or data sets; overrides data.data")
    pretrain.add_argument("--config", help="YAML config, e.g. configs/ssl_dino.yaml")
    pretrain.add_argument("--steps", type=int, help="override train.steps")
    pretrain.add_argument("--threads", type=int, help=THREADS_HELP)
    pretrain.add_argument("--out", required=True, help="run folder")
    pretrain.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    pretrain.add_argument(
        "--stop-at", type=int, help="end this run at that step (checkpointed); continue with --resume"
    )
    pretrain.set_defaults(handler=_ssl_pretrain)


#: ``meddiff fl simulate`` flag -> the sites config key it overrides
FL_FLAGS = {
    "rounds": "federation.rounds",
    "local_steps": "federation.local_steps",
    "proximal": "federation.proximal",
    "l2": "federation.l2",
    "secure": "federation.secure",
    "harmonise": "federation.harmonise",
    "threads": "federation.threads",
}


def _fl_simulate(args: argparse.Namespace) -> int:
    try:
        import flwr  # noqa: F401
    except ImportError as exc:
        raise MeddiffError(f"federated training needs Flower: pip install -e '.[fl]' ({exc})") from exc
    from meddiffusion.app.fl import simulate
    from meddiffusion.segmentation.federated import load_federated_config

    overrides = {key: getattr(args, flag) for flag, key in FL_FLAGS.items() if getattr(args, flag) not in (None, False)}
    config = load_federated_config(args.sites, overrides)
    print(f"wrote {simulate(config, args.out, resume=args.resume)}")
    return 0


def _add_fl(commands) -> None:
    fl = commands.add_parser("fl", help="federated training of the segmenter across sites (Flower)")
    sub = fl.add_subparsers(dest="fl_command", required=True)
    sim = sub.add_parser("simulate", help="run every site of a sites config on this machine (Flower simulation)")
    sim.add_argument("--sites", required=True, help="sites config, e.g. configs/fl_sites.yaml")
    sim.add_argument("--rounds", type=int, help="override federation.rounds")
    sim.add_argument("--local-steps", type=int, help="override federation.local_steps (E)")
    sim.add_argument("--proximal", type=float, help="FedProx mu (override federation.proximal)")
    sim.add_argument("--l2", type=float, help="lambda of the objective's lambda ||theta||^2 (override federation.l2)")
    sim.add_argument("--secure", action="store_true", help="aggregate with SecAgg+ (federation.secure)")
    sim.add_argument("--harmonise", action="store_true", help="per-site intensity harmonisation")
    sim.add_argument("--threads", type=int, help="torch threads per site (override federation.threads)")
    sim.add_argument("--out", required=True, help="run folder (checkpoint every round, final global weights)")
    sim.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    sim.set_defaults(handler=_fl_simulate)


def _add_synth(commands) -> None:
    synth = commands.add_parser("synth", help="synthesize tumour cases with a lesion of a requested size")
    sub = synth.add_subparsers(dest="synth_command", required=True)
    train = sub.add_parser("train", help="train the lesion-inpainting diffusion model")
    train.add_argument("--config", help="YAML config, e.g. configs/synth_inpaint.yaml")
    train.add_argument("--data", help="labelled data set (folder or CSV list); overrides data.data")
    train.add_argument("--steps", type=int, help="override train.steps")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--resume", action="store_true")
    train.add_argument("--stop-at", type=int)
    train.set_defaults(handler=_synth_train)

    lesion = sub.add_parser("lesion", help="paint one lesion into a case")
    lesion.add_argument(
        "input", nargs="?", help="an image (see --modality), a case folder (BraTS naming), or give --flair/--t1ce ..."
    )
    lesion.add_argument("--modality", choices=["t1", "t1ce", "t2", "flair"], help="of a single input image")
    lesion.add_argument("--exclude-label", help="label map of abnormal tissue to keep the lesion away from")
    for m in ("t1", "t1ce", "t2", "flair"):
        lesion.add_argument(f"--{m}", help=f"{m} image")
    lesion.add_argument("--volume-ml", type=float, required=True, help="whole-tumour volume of the new lesion")
    lesion.add_argument("--foci", type=int, default=1)
    lesion.add_argument("--center", help="voxel indices X,Y,Z of the (first) focus; default: random in the brain")
    lesion.add_argument("--seed", type=int, default=0)
    lesion.add_argument("--steps", type=int, default=10, help="sampler steps per plane")
    lesion.add_argument("--weights", help="weights folder (default: the shipped synthesis weights)")
    lesion.add_argument(
        "--out-image", required=True, help="one painted image: exactly this file; several: OUT_<modality>.nii.gz"
    )
    lesion.add_argument("--out-label", required=True, help="label map (BraTS 2021); LABEL.json records the case")
    lesion.add_argument("--force", action="store_true")
    lesion.set_defaults(handler=_synth_lesion)

    cases = sub.add_parser("cases", help="a synthetic data set (nnU-Net raw layout) from a recipe; resumes")
    cases.add_argument("--recipe", required=True, help="YAML recipe, e.g. configs/synth_recipe.yaml")
    cases.add_argument("--n", type=int, required=True)
    cases.add_argument("--out", required=True)
    cases.add_argument("--weights", help="override the recipe's weights")
    cases.set_defaults(handler=_synth_cases)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    code_state()  # the code this process started with is what every output's provenance records
    try:
        return handler(args)
    except MeddiffError as exc:
        print(f"meddiff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("meddiff: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader closed the pipe (``meddiff ... | head``): stop quietly, and keep Python's exit-time flush
        # of stdout from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2


if __name__ == "__main__":
    sys.exit(main())
