"""``meddiff seg postprocessing``: the post-processing rule chosen on a cross-validation's out-of-fold predictions,
as nnU-Net chooses its own (``nnUNetv2_find_best_configuration``) rather than on test cases.

Every held-out case's saved prediction (``seg ablate``'s ``pred/``) is re-scored under each candidate rule (keep
whole-tumour components of at least a fraction of the largest; 1.0 keeps the largest alone) and the rule with the
best mean Dice is kept (ties: the lower mean WT HD95, then the milder rule). Chosen on all folds, the rule's figure
would be measured on the cases that chose it, so its effect is also estimated leave-one-fold-out: each fold is
scored under the rule chosen on the other folds, without its own labels. That figure is the one to report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torchio as tio
from tqdm.auto import tqdm

from meddiffusion.app.ablation import SCORES_FILE, fold_dir
from meddiffusion.data.layouts import read_dataset
from meddiffusion.errors import MeddiffError
from meddiffusion.eval.cases import reference_label, score_case
from meddiffusion.io import modality_names, write_json
from meddiffusion.provenance import provenance
from meddiffusion.segmentation.predict import postprocess, postprocess_rule
from meddiffusion.segmentation.train import load_seg_config
from meddiffusion.weights import CONFIG_FILE, read_config

#: candidate rules (``min_fraction``), mildest first; none below the rule the predictions were saved with
RULES = (0.1, 0.2, 0.3, 0.5, 1.0)
REGIONS = ("WT", "TC", "ET")


def saved_rule(run: Path) -> float:
    """The rule a fold's predictions were saved with: its weights' own, else the default (also for the FLAIR
    floor, which has no weights)."""
    path = run / "weights" / CONFIG_FILE
    return postprocess_rule(json.loads(path.read_text()) if path.is_file() else {})


def score_rules(out: str | Path, variant: str, rules: Sequence[float] = RULES) -> list[dict[str, Any]]:
    """One row per finished fold, held-out case and rule: the saved prediction re-scored under that rule against
    the expert label, read from the data set the fold's config records (relative to it)."""
    out = Path(out)
    folds = sorted(int(p.parent.name[4:]) for p in out.glob(f"{variant}/fold*/{SCORES_FILE}"))
    if not folds:
        raise MeddiffError(f"no finished fold of variant {variant!r} (seg ablate --out)", out)
    rows = []
    for fold in folds:
        run = fold_dir(out, variant, fold)
        if too_mild := [r for r in rules if r < saved_rule(run)]:
            raise MeddiffError(f"rules {too_mild} are milder than the one its predictions were saved with", run)
        data = load_seg_config(run / "config.json").data
        cases = {c.case_id: c for c in read_dataset(data.data, data.layout) if c.label is not None}
        test_ids = json.loads((run / "provenance.json").read_text())["test"]
        if missing := [c for c in test_ids if c not in cases]:
            raise MeddiffError(f"held-out cases {', '.join(missing)} are not labelled cases of {data.data}", run)
        for case_id in tqdm(test_ids, desc=f"fold {fold}", leave=False):
            subject, label = reference_label(cases[case_id], data.modalities)
            path = run / "pred" / f"{case_id}.nii.gz"
            if not path.is_file():
                raise MeddiffError("missing prediction of a finished fold", path)
            pred = tio.LabelMap(path).data[0].numpy().astype(np.uint8)
            if pred.shape != label.shape:
                raise MeddiffError(f"prediction {pred.shape} and label {label.shape} differ in shape", path)
            spacing = tuple(subject[modality_names(subject)[0]].spacing)
            for rule in rules:
                metrics = score_case(postprocess(pred, rule), label, spacing, cases[case_id])
                rows.append({"variant": variant, "fold": fold, "case_id": case_id, "min_fraction": rule, **metrics})
    return rows


def _objective(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(mean Dice over regions and cases, mean WT HD95): NaN (regions a label does not delineate) left out."""
    dice = np.nanmean([[r[f"{k}_dice"] for k in REGIONS] for r in rows])
    return float(dice), float(np.nanmean([r["WT_hd95"] for r in rows]))


def choose_rule(rows: Sequence[dict[str, Any]]) -> float:
    """The rule with the best mean Dice; ties (to 1e-4) go to the lower WT HD95, then the milder rule."""
    rules = sorted({r["min_fraction"] for r in rows})
    scores = {rule: _objective([r for r in rows if r["min_fraction"] == rule]) for rule in rules}
    return min(rules, key=lambda rule: (-round(scores[rule][0], 4), round(scores[rule][1], 2), rule))


def leave_fold_out(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fold's rows under the rule chosen on the other folds' rows (a fold alone keeps the mildest rule)."""
    folds = sorted({r["fold"] for r in rows})
    chosen = []
    for fold in folds:
        others = [r for r in rows if r["fold"] != fold]
        rule = choose_rule(others) if others else min(r["min_fraction"] for r in rows)
        chosen += [r for r in rows if r["fold"] == fold and r["min_fraction"] == rule]
    return chosen


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per rule: cases, mean Dice of each region and mean WT HD95 (the report's table)."""
    table = {}
    for rule in sorted({r["min_fraction"] for r in rows}):
        picked = [r for r in rows if r["min_fraction"] == rule]
        table[str(rule)] = {"cases": len(picked)} | {
            m: float(np.nanmean([r[m] for r in picked])) for m in (*(f"{k}_dice" for k in REGIONS), "WT_hd95")
        }
    return table


def choose_postprocessing(
    out: str | Path,
    variant: str,
    report: str | Path,
    weights: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Score the rules on ``variant``'s out-of-fold predictions, write the report (every rule's means and per-case
    rows, the choice, the leave-one-fold-out rows) and, given ``weights``, record the choice in that folder's config
    so that prediction applies it."""
    if weights is not None:
        config = read_config(weights)
        if "postprocess" in config and not force:
            raise MeddiffError("already carries a post-processing rule; use --force to replace it", weights)
    rows = score_rules(out, variant)
    rule = choose_rule(rows)
    held_out = leave_fold_out(rows)
    folds = sorted({r["fold"] for r in rows})
    result = {
        "variant": variant,
        "cross_validation": str(Path(out)),
        "folds": folds,
        "rules": summarise(rows),
        "chosen": {"min_fraction": rule},
        "leave_fold_out": {
            "rules_by_fold": {str(f): next(r["min_fraction"] for r in held_out if r["fold"] == f) for f in folds},
            "summary": summarise([{**r, "min_fraction": "chosen"} for r in held_out])["chosen"],
            "rows": held_out,
        },
        "rows": rows,
    }
    write_json(provenance(**result), report, force=force)
    if weights is not None:
        mean = result["rules"][str(rule)]
        chosen_on = (
            f"out-of-fold predictions of {variant} in {len(folds)} folds ({mean['cases']} cases): "
            f"mean WT/TC/ET Dice {mean['WT_dice']:.3f}/{mean['TC_dice']:.3f}/{mean['ET_dice']:.3f}, "
            f"WT HD95 {mean['WT_hd95']:.1f} mm ({Path(report).name})"
        )
        config["postprocess"] = {"min_fraction": rule, "chosen_on": chosen_on}
        write_json(config, Path(weights) / CONFIG_FILE, force=True)
    return result
