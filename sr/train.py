"""``meddiff sr train``: a YAML config -> a run folder with checkpoints, logs and a weights folder.

One config trains either the diffusion model (``method: diffusion``, DDPM objective predicting the clean
residual) or the regression baseline on the same backbone (``method: unet``, L1 on the residual).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from meddiffusion.config import config_record, load_train_config
from meddiffusion.diffusion import NetworkConfig, build_diffusion_network, make_scheduler, sample
from meddiffusion.diffusion.loss import diffusion_loss
from meddiffusion.diffusion.schedule import ScheduleConfig
from meddiffusion.errors import MeddiffError
from meddiffusion.sr import TRAINED
from meddiffusion.sr.data import SRPairs
from meddiffusion.sr.degradation import AXES
from meddiffusion.sr.pipeline import SRPipeline
from meddiffusion.sr.planes import Task
from meddiffusion.training import TrainConfig, train, write_run_files
from meddiffusion.weights import copy_weights, record_run, save_weights


@dataclass
class SRDataConfig:
    train: list[str] = field(default_factory=list)
    #: volumes blurred along z (thick slices resampled to thin ones): training data for the in-plane tasks only
    inplane_only: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    scales: list[int] = field(default_factory=lambda: [2, 4])
    axes: list[str] = field(default_factory=lambda: ["inplane", "through"])
    patch_size: int = 48
    neighbours: int = 1
    residual_scale: float = 10.0
    #: residual diffusion: a regression model's weights folder (``method: unet``); the diffusion model learns the
    #: residual over its prediction, which is also a conditioning channel. None: the residual over interpolation.
    prior: str | None = None
    #: residual diffusion: train on the regression's prediction of this many planes per volume, task and plane
    #: family (its cost), chosen by seed among the planes with head in them; None: every such plane
    prior_planes: int | None = None

    def __post_init__(self) -> None:
        if bad := [a for a in self.axes if a not in AXES]:
            raise ValueError(f"unknown axes {bad}; use {AXES}")
        if any(s < 2 for s in self.scales):
            raise ValueError("scales must be >= 2")

    def tasks(self) -> list[Task]:
        return [Task(s, a) for s in self.scales for a in self.axes]


@dataclass
class SRTrainConfig:
    method: str = "diffusion"
    seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: SRDataConfig = field(default_factory=SRDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.method not in TRAINED:
            raise ValueError(f"method must be one of {TRAINED}")
        channels = 2 * self.data.neighbours + 1 + (1 if self.data.prior else 0)
        if self.network.cond_channels != channels:
            raise ValueError(
                f"network.cond_channels must be {channels} (2 * data.neighbours + 1, plus 1 with a data.prior)"
            )
        if self.data.prior and self.method != "diffusion":
            raise ValueError("data.prior (a regression model to refine) is for method 'diffusion'")
        if self.network.diffusion != (self.method == "diffusion"):
            raise ValueError("network.diffusion must be true exactly for method 'diffusion'")


def load_sr_config(path: str | Path, overrides: dict | None = None) -> SRTrainConfig:
    """Load a training config; data paths resolve relative to the config file's folder, and must exist."""
    config = load_train_config(
        SRTrainConfig,
        path,
        overrides,
        (("data", "train"), ("data", "inplane_only"), ("data", "val"), ("data", "prior")),
    )
    if not config.data.train and not config.data.inplane_only:
        raise MeddiffError("data.train lists no volumes", path)
    for split in ("train", "inplane_only", "val"):
        if missing := [p for p in getattr(config.data, split) if not Path(p).is_file()]:
            raise MeddiffError(f"data.{split} lists missing files: {', '.join(missing)}", path)
    return config


def regression_loss(model, batch, generator):
    """The baseline: one forward pass at timestep 0, L1 to the residual."""
    t0 = torch.zeros(batch["cond"].shape[0], dtype=torch.long, device=batch["cond"].device)
    return F.l1_loss(model(None, t0, batch["cond"], batch["conditions"]).float(), batch["target"].float())


def validation(config: SRTrainConfig, val_set: SRPairs, n_patches: int = 32, steps: int = 4):
    """PSNR (data range 1 in normalised units) of predicted vs true patches, fixed patches and seed."""
    batch = [val_set[i] for i in range(n_patches)]
    cond = torch.stack([b["cond"] for b in batch])
    target = torch.stack([b["target"] for b in batch])
    conditions = torch.stack([b["conditions"] for b in batch])
    scheduler = make_scheduler("ddim", **dataclasses.asdict(config.schedule))

    def validate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        pred = sample(
            model,
            scheduler,
            cond.to(device),
            conditions.to(device),
            steps,
            generator=torch.Generator(device).manual_seed(0),
        ).cpu()
        mse = F.mse_loss(pred / config.data.residual_scale, target / config.data.residual_scale).item()
        return {"psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}

    return validate


def _pairs(
    config: SRTrainConfig,
    paths: list[str],
    seed: int,
    augment: bool,
    prior: SRPipeline | None,
    inplane_only: list[str] | None = None,
    prior_cache: Path | None = None,
) -> SRPairs:
    data = config.data
    return SRPairs(
        paths,
        data.tasks(),
        data.patch_size,
        data.neighbours,
        data.residual_scale,
        seed=seed,
        augment=augment,
        prior=(prior.model, prior.config) if prior is not None else None,
        inplane_only=inplane_only or (),
        prior_cache=prior_cache,
        prior_planes=data.prior_planes,
    )


def load_prior(config: SRTrainConfig) -> SRPipeline | None:
    """The regression model residual diffusion refines; it must do every task the diffusion model learns."""
    if not config.data.prior:
        return None
    prior = SRPipeline.from_pretrained(config.data.prior)
    if prior.method != "unet":
        raise MeddiffError(f"data.prior must be regression weights (method 'unet'), not {prior.method!r}", prior.folder)
    missing = [
        t for t in config.data.tasks() if t.scale not in prior.config["scales"] or t.axis not in prior.config["axes"]
    ]
    if missing or prior.config["neighbours"] != config.data.neighbours:
        raise MeddiffError(
            f"data.prior was trained for scales {prior.config['scales']} on axes {prior.config['axes']} with "
            f"{prior.config['neighbours']} neighbour(s); this run needs {config.data.scales}, {config.data.axes}, "
            f"{config.data.neighbours}",
            prior.folder,
        )
    return prior


def weights_config(config: SRTrainConfig) -> dict:
    """What the weights folder's ``config.json`` says about the model; ``build_diffusion_network`` builds from it."""
    return {
        "network": config.network.to_dict(),
        "task": "sr",
        "method": config.method,
        "scales": config.data.scales,
        "axes": config.data.axes,
        "neighbours": config.data.neighbours,
        "residual_scale": config.data.residual_scale,
        "schedule": dataclasses.asdict(config.schedule),
        "seed": config.seed,
    }


def run_training(config: SRTrainConfig, out: Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """Train and write ``out/weights`` (EMA weights + config + training log); returns that folder."""
    torch.manual_seed(config.seed)
    prior = load_prior(config)
    cache = out / "prior_cache"  # the regression's predictions: a resumed run reads them back
    train_set = _pairs(config, config.data.train, config.seed, True, prior, config.data.inplane_only, cache)
    validate = None
    if config.data.val:
        val_set = _pairs(config, config.data.val, seed=12345, augment=False, prior=prior, prior_cache=cache)
        validate = validation(config, val_set)
    described = weights_config(config)
    model = build_diffusion_network(described)
    scheduler = make_scheduler("ddpm", **dataclasses.asdict(config.schedule))
    loss_fn = diffusion_loss(scheduler) if config.method == "diffusion" else regression_loss
    data_list = config_record(config, out)["data"]
    main = write_run_files(out, config, {k: data_list[k] for k in ("train", "inplane_only", "val")})
    model = train(
        model,
        train_set,
        loss_fn,
        config.train,
        out,
        seed=config.seed,
        validate=validate,
        resume=resume,
        stop_at=stop_at,
    )
    folder = out / "weights"
    if not main:
        return folder
    described["training"] = {"config": config_record(config, folder)}
    if prior is not None:  # the folder carries the regression model it refines: it alone reproduces the method
        copy_weights(prior.folder, folder / "prior", force=True)  # its data paths re-based on the new place
        described["prior"] = "prior"
    save_weights(folder, model, described)
    record_run(folder, model.n_parameters, out, ("training_log.csv", "validation_log.csv"))
    return folder
