"""Federated benchmark (issue #18): federated vs centralised vs each site alone at the same total local steps.

    python benchmarks/fl_benchmark.py --out ~/meddiff-runs/fl-bench [--rounds 20] [--local-steps 50]
        [--secure-rounds 2] [--arms federated secure harmonised centralised alone]

Sites, test cases and the recipe come from ``configs/fl_sites.yaml``. With K sites, R rounds and E local steps:
the federation takes R x E steps at every site (R x E x K in all), the centralised model R x E x K steps on the
pooled training cases, each site alone R x E steps on its own. ``secure`` repeats the federation with SecAgg+ for
``--secure-rounds`` rounds (its cost per round; its weights equal the plain ones up to quantisation, a test shows).
Every model is scored on every site's held-out test cases (``eval.cases``: prediction on the original grid,
post-processed as ``seg predict``), a site's alone model on its own (a site without test cases trains no alone
model). An arm whose weights (and scores) exist is not redone, so the benchmark continues where it stopped.
Writes ``fl_per_case.csv``, ``fl_summary.json`` and ``fl_table.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SITES = ROOT / "configs" / "fl_sites.yaml"
ARMS = ("federated", "secure", "harmonised", "centralised", "alone")


def federate(config, out: Path, rounds: int) -> Path:
    from meddiffusion.app.fl import simulate
    from meddiffusion.segmentation.federated import CHECKPOINT
    from meddiffusion.weights import CONFIG_FILE

    if (out / "weights" / "config.json").is_file():
        return out / "weights"
    config.federation.rounds = rounds
    return simulate(config, out, resume=(out / CHECKPOINT / CONFIG_FILE).is_file())


def train_on(config, sites: list[str], steps: int, out: Path) -> Path:
    """The recipe trained on the named sites' training cases (pooled), with the trainer ``seg train`` uses."""
    from meddiffusion.segmentation.federated import site_cases
    from meddiffusion.segmentation.train import load_seg_config, run_training

    if (out / "weights" / "config.json").is_file():
        return out / "weights"
    from meddiffusion.data.layouts import read_dataset

    ids = {c.case_id for s in sites for c in site_cases(config, s)}
    overrides = {
        "seed": config.seed,
        "data.data": config.data,
        "data.val_cases": [],
        "data.exclude_cases": [c.case_id for c in read_dataset(config.data) if c.case_id not in ids],
        "train.steps": steps,
    }
    return run_training(load_seg_config(config.recipe, overrides), out, resume=(out / "checkpoint").exists())


def score(weights: Path, config, sites: list[str], out: Path, landmarks: dict | None = None) -> list[dict]:
    """Per-case metrics of one model on the named sites' test cases (site landmarks for a harmonised model)."""
    from meddiffusion.eval.cases import evaluate_cases
    from meddiffusion.io import read_rows
    from meddiffusion.segmentation.federated import site_cases
    from meddiffusion.segmentation.predict import Segmenter

    done = out / "scores.json"
    if done.is_file():
        return read_rows(done)
    segmenter = Segmenter.from_pretrained(weights)
    rows = []
    for site in sites:
        cases = {c.case_id: c for c in site_cases(config, site, "test")}
        if not cases:
            continue
        predict = partial(segmenter.predict, landmarks=(landmarks or {}).get(site))
        for row in evaluate_cases(predict, cases, list(cases), out / "predictions", segmenter.modalities):
            rows.append({"site": site, **row})
    done.write_text(json.dumps(rows) + "\n")
    return rows


def site_landmarks(config) -> dict:
    """Each site's intensity landmarks, as its client fitted them on its training cases."""
    from meddiffusion.segmentation.federated import load_site

    return {s: load_site(config, s).landmarks for s in config.site_names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default=str(SITES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, default=50)
    parser.add_argument("--secure-rounds", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    args = parser.parse_args()

    from meddiffusion.eval.report import write_csv
    from meddiffusion.segmentation.federated import load_federated_config

    def load(**federation):
        overrides = {f"federation.{k}": v for k, v in {"local_steps": args.local_steps, **federation}.items()}
        return load_federated_config(args.sites, overrides)

    config = load()
    sites, k = config.site_names, len(config.site_names)
    steps = args.rounds * args.local_steps
    rows: list[dict] = []
    timing: dict[str, float] = {}
    started = time.time()
    if "federated" in args.arms:
        weights = federate(load(), args.out / "federated", args.rounds)
        rows += [{"arm": "federated", **r} for r in score(weights, config, sites, args.out / "federated")]
    if "secure" in args.arms:
        federate(load(secure=True), args.out / "secure", args.secure_rounds)
    if "harmonised" in args.arms:
        harmonised = load(harmonise=True)
        weights = federate(harmonised, args.out / "harmonised", args.rounds)
        landmarks = site_landmarks(harmonised)
        rows += [{"arm": "harmonised", **r} for r in score(weights, config, sites, args.out / "harmonised", landmarks)]
    if "centralised" in args.arms:
        weights = train_on(config, sites, steps * k, args.out / "centralised")
        rows += [{"arm": "centralised", **r} for r in score(weights, config, sites, args.out / "centralised")]
    if "alone" in args.arms:
        for site in sites:
            if not config.sites[site].get("test"):
                continue  # nothing held out to score it on (the one-case BRATS 2012 site)
            weights = train_on(config, [site], steps, args.out / f"alone_{site}")
            rows += [{"arm": "alone", **r} for r in score(weights, config, [site], args.out / f"alone_{site}")]
    timing["benchmark_s"] = time.time() - started
    for arm in ("federated", "secure", "harmonised"):
        log = args.out / arm / "rounds.json"
        if log.is_file():
            rounds = json.loads(log.read_text())
            # the median: a round that starts a process also loads every site's cases
            timing[f"{arm}_s_per_round"] = float(np.median([r["seconds"] for r in rounds]))
            timing[f"{arm}_bytes_per_round"] = float(np.mean([r["bytes_down"] + r["bytes_up"] for r in rounds]))
    if "federated_s_per_round" in timing and "secure_s_per_round" in timing:
        timing["secagg_overhead"] = timing["secure_s_per_round"] / timing["federated_s_per_round"] - 1.0
    write_csv(rows, args.out / "fl_per_case.csv")
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, 2 CPU cores",
        "sites": {s: config.weights[s] for s in sites},
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "steps_per_site": steps,
        "timing": timing,
        "arms": _summarise(rows),
        "federated_minus": _paired(rows),
    }
    (args.out / "fl_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "fl_table.md").write_text(_table(rows))
    print(_table(rows))
    print(json.dumps(timing, indent=2))


def _summarise(rows: list[dict]) -> dict:
    out: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        out[arm] = {m: float(np.nanmean([r[f"{m}_dice"] for r in mine])) for m in ("WT", "TC", "ET")}
        sites = dict.fromkeys(r["site"] for r in mine)
        out[arm]["per_site_WT"] = {s: float(np.nanmean([r["WT_dice"] for r in mine if r["site"] == s])) for s in sites}
    return out


def _paired(rows: list[dict]) -> dict:
    """Federated minus each other arm on the same held-out cases (one pair per patient), t-interval over patients."""
    from meddiffusion.errors import MeddiffError
    from meddiffusion.eval.stats import paired_comparison

    fed = {r["case_id"]: r for r in rows if r["arm"] == "federated"}
    out: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in rows if r["arm"] != "federated"):
        other = {r["case_id"]: r for r in rows if r["arm"] == arm}
        common = sorted(set(fed) & set(other))
        for m in ("WT", "TC", "ET"):
            try:
                s = paired_comparison([other[c][f"{m}_dice"] for c in common], [fed[c][f"{m}_dice"] for c in common])
            except MeddiffError:
                continue
            out[f"{arm}/{m}"] = {k: s[k] for k in ("n", "mean_diff", "ci95_low", "ci95_high", "t_pvalue")}
    return out


def _table(rows: list[dict]) -> str:
    summary = _summarise(rows)
    sites = list(dict.fromkeys(r["site"] for r in rows))
    head = "| arm | WT | TC | ET | " + " | ".join(f"WT {s}" for s in sites) + " |"
    lines = [head, "|" + "---|" * (4 + len(sites))]
    for arm, s in summary.items():
        per_site = " | ".join(f"{s['per_site_WT'][x]:.3f}" if x in s["per_site_WT"] else "-" for x in sites)
        lines.append(f"| {arm} | {s['WT']:.3f} | {s['TC']:.3f} | {s['ET']:.3f} | {per_site} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
