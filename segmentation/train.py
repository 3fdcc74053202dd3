"""``meddiff seg train``: a data set (plus optional synthetic sets) -> a run folder with checkpoints, logs,
the last weights (``weights/``) and the best by validation Dice (``best/``).

Every model (dual-path, MONAI U-Net, SwinUNETR) and every ablation runs through this one trainer on the
shared Accelerate loop; what differs is data in the config.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchio as tio

from meddiffusion.config import config_record, load_train_config
from meddiffusion.data.labels import region_masks
from meddiffusion.data.layouts import CaseFiles, read_dataset
from meddiffusion.data.prepare import load_case
from meddiffusion.errors import MeddiffError
from meddiffusion.io import LABEL_KEY, write_json
from meddiffusion.segmentation.coding import decode
from meddiffusion.segmentation.data import SegPatches
from meddiffusion.segmentation.losses import HybridLoss
from meddiffusion.segmentation.models import (
    SegNetworkConfig,
    build_from_weights_config,
    head_parameters,
    n_parameters,
)
from meddiffusion.segmentation.predict import segment_prepared
from meddiffusion.segmentation.pretrain import load_pretrained_encoder
from meddiffusion.segmentation.reweighting import GradNorm
from meddiffusion.training import TrainConfig, train, write_run_files
from meddiffusion.weights import record_run, save_weights

REWEIGHTING = ("gradnorm", "none")


@dataclass
class SegDataConfig:
    data: str = ""
    layout: str | None = None
    modalities: list[str] = field(default_factory=lambda: ["flair", "t1", "t1ce", "t2"])
    #: modalities a case may lack (zero-filled) and that are dropped out in training so the model serves without
    #: None: T1 and T2, those of ``modalities`` (the BRATS 2015-style FLAIR + T1c cases lack them)
    optional_modalities: list[str] | None = None
    modality_dropout: float = 0.25
    val_cases: list[str] = field(default_factory=list)
    exclude_cases: list[str] = field(default_factory=list)
    spacing: list[float] | None = None
    patch_size: int = 64
    neighbours: int = 1
    foreground_p: float = 0.5
    augment: bool = True
    synthetic: list[str] = field(default_factory=list)
    synthetic_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ValueError("data.modalities is empty")
        if unknown := sorted(set(self.optional) - set(self.modalities)):
            raise ValueError(f"data.optional_modalities {unknown} are not in data.modalities")
        if set(self.optional) == set(self.modalities):
            raise ValueError("data.optional_modalities cannot be all modalities: one must be required")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError("data.modality_dropout must be in [0, 1)")
        if self.spacing is not None and len(self.spacing) != 3:
            raise ValueError("data.spacing needs three values (mm)")

    @property
    def optional(self) -> list[str]:
        """The modalities a case may lack: as configured, or by default T1 and T2 (those of ``modalities``)."""
        if self.optional_modalities is not None:
            return list(self.optional_modalities)
        return [m for m in ("t1", "t2") if m in self.modalities]


@dataclass
class SegLossConfig:
    alpha: float = 1.0
    ce: float = 1.0
    beta: float = 0.0  # the proposal's boundary term (0.5) showed no gain in the five-fold ablation (#14)
    gamma: float = 0.0  # the topology term costs 20-30 % more per step; its effect is for the ablation to show
    boundary: str = "gradient"
    topology_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])
    topology_downsample: int = 2
    reweighting: str = "none"  # GradNorm (the proposal's) showed no gain in the five-fold ablation (#14)
    gradnorm_alpha: float = 1.5
    gradnorm_lr: float = 0.025
    gradnorm_bounds: list[float] = field(default_factory=lambda: [0.5, 2.0])

    def __post_init__(self) -> None:
        if self.reweighting not in REWEIGHTING:
            raise ValueError(f"loss.reweighting must be one of {REWEIGHTING}")


@dataclass
class SegTrainConfig:
    seed: int = 0
    #: a pretrained encoder (``ssl pretrain`` weights folder) to start from, or None for a random start
    init: str | None = None
    data: SegDataConfig = field(default_factory=SegDataConfig)
    network: SegNetworkConfig = field(default_factory=SegNetworkConfig)
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000,
            batch_size=8,
            learning_rate=1e-3,
            lr_schedule="poly",
            warmup_steps=50,
            ema_decay=0.99,
            validate_every=250,
        )
    )

    def __post_init__(self) -> None:
        self.network.check_patch(self.data.patch_size)


def load_seg_config(path: str | Path | None, overrides: dict | None = None) -> SegTrainConfig:
    """The defaults, updated by a YAML file (paths relative to it) and by ``section.key`` overrides."""
    return load_train_config(SegTrainConfig, path, overrides, (("data", "data"), ("data", "synthetic"), ("", "init")))


def training_cases(config: SegDataConfig) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """(train, validation) case files: ``val_cases`` are held out, ``exclude_cases`` left out entirely."""
    if not config.data:
        raise MeddiffError("no training data given (--data DIR or data.data in the config)")
    cases = [c for c in read_dataset(config.data, config.layout) if c.case_id not in config.exclude_cases]
    ids = {c.case_id for c in cases}
    if unknown := sorted(set(config.val_cases) - ids):
        raise MeddiffError(f"validation case(s) {', '.join(unknown)} are not in the data set", config.data)
    val = [c for c in cases if c.case_id in config.val_cases]
    train_cases = [c for c in cases if c.case_id not in config.val_cases and c.label is not None]
    if not train_cases:
        raise MeddiffError("no labelled training cases left", config.data)
    return train_cases, val


def _load(cases: list[CaseFiles], config: SegDataConfig) -> list[tio.Subject]:
    return [load_case(c, config.modalities, config.spacing, config.optional) for c in cases]


def make_loss(config: SegLossConfig, output: str) -> tuple:
    """The training objective: the hybrid loss, its terms weighted by GradNorm (or fixed), plus what to log."""
    hybrid = HybridLoss(
        config.alpha,
        config.beta,
        config.gamma,
        config.boundary,
        config.topology_weights,
        config.topology_downsample,
        ce=config.ce,
        output=output,
    )
    fixed = {k: v for k, v in hybrid.weights.items() if v}
    gradnorm = (
        GradNorm(list(fixed), config.gradnorm_alpha, config.gradnorm_lr, config.gradnorm_bounds)
        if config.reweighting == "gradnorm"
        else None
    )

    def loss_fn(net, batch, generator):
        logits = net(batch["image"])
        started = time.perf_counter()
        terms = hybrid.terms(logits.float(), batch["label"])
        logged = {f"{k}_loss": float(v.detach()) for k, v in terms.items()}
        if "topology" in terms:
            logged["topology_s"] = time.perf_counter() - started
        if gradnorm is None:
            return sum(fixed[k] * v for k, v in terms.items()), logged
        # GradNorm balances the terms *as configured*: its learned weights multiply alpha, beta, gamma
        scaled = {k: fixed[k] * v for k, v in terms.items()}
        total = gradnorm(scaled, head_parameters(net))
        logged.update({f"w_{k}": w for k, w in gradnorm.as_dict().items()})
        return total, logged

    return loss_fn, gradnorm


def region_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice of WT / TC / ET (BraTS 2021 labels); an empty region in both counts as 1."""
    out, refs = {}, region_masks(ref)
    for name, p in region_masks(pred).items():
        r = refs[name]
        denom = p.sum() + r.sum()
        out[f"dice_{name.lower()}"] = 1.0 if denom == 0 else float(2 * (p & r).sum() / denom)
    return out


def validation(subjects: list[tio.Subject], config: SegTrainConfig, run_dir: Path):
    """Sliding-window Dice on whole held-out volumes; keeps the best weights in ``run_dir/best``."""
    best_file = run_dir / "best" / "metrics.json"

    def validate(model) -> dict[str, float]:
        per_case = []
        for subject in subjects:
            probs = segment_prepared(
                model, subject, config.data.patch_size, config.data.neighbours, config.network.output
            )
            pred = decode(probs.numpy(), config.network.output)
            per_case.append(region_dice(pred, subject[LABEL_KEY].data[0].numpy()))
        metrics = {k: float(np.mean([c[k] for c in per_case])) for k in per_case[0]}
        metrics["dice_mean"] = float(np.mean(list(metrics.values())))
        best = json.loads(best_file.read_text())["dice_mean"] if best_file.exists() else -1.0
        if metrics["dice_mean"] > best:
            _save(run_dir / "best", model, config, extra={"validation": metrics})
            write_json(metrics, best_file)
        return metrics

    return validate


def weights_config(config: SegTrainConfig) -> dict:
    """What a weights folder's ``config.json`` says about its model (``models.build_from_weights_config``
    builds from it): the network, the modalities in channel order, which of them it can do without, the grid."""
    return {
        "network": config.network.to_dict(),
        "task": "segmentation",
        "modalities": config.data.modalities,
        "optional_modalities": config.data.optional,
        "spacing": config.data.spacing,
        "patch_size": config.data.patch_size,
        "neighbours": config.data.neighbours,
        "label_convention": "brats2021",
        "seed": config.seed,
    }


def _save(
    folder: Path, model: torch.nn.Module, config: SegTrainConfig, extra: dict | None = None, run_dir: Path | None = None
) -> Path:
    training = {"config": config_record(config, folder), **(extra or {})}
    folder = save_weights(folder, model, {**weights_config(config), "training": training})
    record_run(folder, n_parameters(model), run_dir, ("training_log.csv", "validation_log.csv") if run_dir else ())
    return folder


def run_training(config: SegTrainConfig, out: Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """Train and write ``out/weights`` (EMA weights, config, logs); returns that folder."""
    torch.manual_seed(config.seed)
    train_cases, val_cases = training_cases(config.data)
    subjects = _load(train_cases, config.data)
    synthetic = [s for folder in config.data.synthetic for s in _load(read_dataset(folder), config.data)]
    dataset = SegPatches(
        subjects,
        config.data.patch_size,
        config.data.neighbours,
        config.data.foreground_p,
        config.data.augment,
        synthetic,
        config.data.synthetic_ratio,
        seed=config.seed,
        optional=config.data.optional,
        modality_dropout=config.data.modality_dropout,
    )
    model = build_from_weights_config(weights_config(config))
    if config.init:
        load_pretrained_encoder(model, config.init, weights_config(config))
    loss_fn, gradnorm = make_loss(config.loss, config.network.output)
    data_list = {
        "train": [c.case_id for c in train_cases],
        "val": [c.case_id for c in val_cases],
        "synthetic": config.data.synthetic,
        "synthetic_cases": len(synthetic),
    }
    main = write_run_files(out, config, data_list)
    validate = validation(_load(val_cases, config.data), config, out) if val_cases and main else None
    model = train(
        model,
        dataset,
        loss_fn,
        config.train,
        out,
        seed=config.seed,
        validate=validate,
        resume=resume,
        stop_at=stop_at,
        extra_state=[gradnorm] if gradnorm is not None else [],
    )
    if not main:
        return out / "weights"
    return _save(out / "weights", model, config, extra={"data": data_list}, run_dir=out)
