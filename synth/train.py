"""``meddiff synth train``: real labelled cases -> a lesion-inpainting diffusion model (weights folder).

The weights folder also keeps the lesion-shape templates (``templates.npz``: the training cases' tumour
regions, cropped), so generating from it uses shapes from the same training cases and nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from meddiffusion.config import config_record, load_train_config
from meddiffusion.data.layouts import read_dataset
from meddiffusion.data.prepare import load_case
from meddiffusion.diffusion import NetworkConfig, build_diffusion_network, make_scheduler
from meddiffusion.diffusion.loss import diffusion_loss
from meddiffusion.diffusion.schedule import ScheduleConfig
from meddiffusion.errors import MeddiffError
from meddiffusion.provenance import file_sha256
from meddiffusion.synth.data import MARGIN, InpaintPairs, cond_channels
from meddiffusion.synth.masks import TEMPLATES_FILE, save_templates
from meddiffusion.training import TrainConfig, train, write_run_files
from meddiffusion.weights import record_run, save_weights


@dataclass
class SynthDataConfig:
    data: str = ""
    layout: str | None = None
    modalities: list[str] = field(default_factory=lambda: ["flair", "t1ce"])
    #: modalities a case may lack (zero-filled when read); with ``modality_dropout`` > 0 the model paints any
    #: subset of its modalities, e.g. a single FLAIR
    optional_modalities: list[str] = field(default_factory=list)
    modality_dropout: float = 0.0
    exclude_cases: list[str] = field(default_factory=list)
    patch_size: int = 64

    def __post_init__(self) -> None:
        if unknown := [m for m in self.optional_modalities if m not in self.modalities]:
            raise ValueError(f"data.optional_modalities {unknown} are not among data.modalities")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError("data.modality_dropout must be in [0, 1)")


@dataclass
class SynthTrainConfig:
    seed: int = 0
    data: SynthDataConfig = field(default_factory=SynthDataConfig)
    network: NetworkConfig = field(
        default_factory=lambda: NetworkConfig(target_channels=2, cond_channels=10, condition_names=["log2_volume_ml"])
    )
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=3000, batch_size=8, learning_rate=5e-4, ema_decay=0.995)
    )

    def __post_init__(self) -> None:
        n = len(self.data.modalities)
        if self.network.target_channels != n or self.network.cond_channels != cond_channels(n):
            raise ValueError(
                f"with {n} modalities the network needs target_channels {n} and cond_channels {cond_channels(n)}"
            )
        if self.network.condition_names != ["log2_volume_ml"]:
            raise ValueError("network.condition_names must be [log2_volume_ml]")
        if self.data.patch_size % self.network.downsampling:
            raise ValueError(f"data.patch_size must be a multiple of {self.network.downsampling}")


def load_synth_config(path: str | Path | None, overrides: dict | None = None) -> SynthTrainConfig:
    """The defaults, updated by a YAML file (data path relative to it) and by ``section.key`` overrides."""
    return load_train_config(SynthTrainConfig, path, overrides, (("data", "data"),))


def weights_config(config: SynthTrainConfig) -> dict:
    """What the weights folder's ``config.json`` says about the model; ``build_diffusion_network`` builds from it."""
    return {
        "network": config.network.to_dict(),
        "task": "synth",
        "modalities": config.data.modalities,
        # painted without them: every modality when trained with dropout, else those cases may lack
        "optional_modalities": config.data.modalities
        if config.data.modality_dropout
        else config.data.optional_modalities,
        "margin": MARGIN,
        "schedule": dataclasses.asdict(config.schedule),
        "seed": config.seed,
    }


def run_training(config: SynthTrainConfig, out: Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """Train and write ``out/weights`` (EMA weights, config, templates, training log); returns that folder."""
    if not config.data.data:
        raise MeddiffError("no training data given (--data or data.data in the config)")
    torch.manual_seed(config.seed)
    cases = [
        c
        for c in read_dataset(config.data.data, config.data.layout)
        if c.label is not None and c.case_id not in config.data.exclude_cases
    ]
    if not cases:
        raise MeddiffError("no labelled training cases", config.data.data)
    subjects = [load_case(c, config.data.modalities, None, config.data.optional_modalities) for c in cases]
    dataset = InpaintPairs(
        subjects, config.data.patch_size, seed=config.seed, modality_dropout=config.data.modality_dropout
    )
    described = weights_config(config)
    model = build_diffusion_network(described)
    scheduler = make_scheduler("ddpm", **dataclasses.asdict(config.schedule))
    # the images the generator learns from, by hash: a study proves that no test case reached it
    data_list = {
        "cases": [c.case_id for c in cases],
        "image_sha256": {
            c.case_id: {m: file_sha256(c.images[m]) for m in config.data.modalities if m in c.images} for c in cases
        },
    }
    main = write_run_files(out, config, data_list)
    model = train(
        model, dataset, diffusion_loss(scheduler), config.train, out, seed=config.seed, resume=resume, stop_at=stop_at
    )
    folder = out / "weights"
    if not main:
        return folder
    described["training"] = {"config": config_record(config, folder), "data": data_list}
    save_weights(folder, model, described)
    save_templates(subjects, folder / TEMPLATES_FILE)
    record_run(folder, model.n_parameters, out, ("training_log.csv",))
    return folder
