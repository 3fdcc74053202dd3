"""``meddiff ssl pretrain``: DINO-style self-supervised pretraining of the segmenter's encoder on unlabelled MRI,
and ``seg train --init``: loading the pretrained encoder into a segmenter.

Every volume given is prepared as the segmenter's inputs are (``data.prepare``: brain normalisation; a modality a
volume lacks is zero-filled, as the segmenter sees it with modality dropout), labels ignored. Collapse is watched,
not hoped against: the training log has the teacher's output entropy, how many prototypes the teacher uses and the
spread of the embeddings; every ``validate_every`` steps a k-NN probe classifies tumour vs healthy patches of a
labelled data set by the teacher's embeddings (leave-one-out, cosine, k = 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from meddiffusion.config import config_record, load_train_config
from meddiffusion.data.labels import region_masks
from meddiffusion.data.layouts import read_dataset, read_volumes
from meddiffusion.data.prepare import load_case
from meddiffusion.errors import MeddiffError
from meddiffusion.io import LABEL_KEY, modality_names
from meddiffusion.segmentation.dino import DINOHead, DINOModel, DINOObjective
from meddiffusion.segmentation.models import (
    PRETRAINABLE,
    SegNetworkConfig,
    build_from_weights_config,
    encoder_keys,
    n_parameters,
)
from meddiffusion.segmentation.views import PlaneViews, plane_patch
from meddiffusion.training import TrainConfig, process_state, train, write_run_files
from meddiffusion.weights import load_weights, record_run, save_weights


@dataclass
class SSLDataConfig:
    data: list[str] = field(default_factory=list)
    probe: str = ""  # a labelled data set for the k-NN probe (labels used for measuring only)
    modalities: list[str] = field(default_factory=lambda: ["flair", "t1", "t1ce", "t2"])
    neighbours: int = 1
    global_size: int = 64
    local_size: int = 32
    n_local: int = 4
    probe_patches: int = 48  # per class (tumour, healthy)

    def __post_init__(self) -> None:
        if self.global_size % 8 or self.local_size % 8:
            raise ValueError("data.global_size and data.local_size must be multiples of 8")


@dataclass
class DINOConfig:
    hidden: int = 256
    bottleneck: int = 64
    prototypes: int = 256
    t_student: float = 0.1
    t_teacher: float = 0.04
    center_momentum: float = 0.9
    base_momentum: float = 0.996


@dataclass
class SSLConfig:
    seed: int = 0
    data: SSLDataConfig = field(default_factory=SSLDataConfig)
    network: SegNetworkConfig = field(default_factory=SegNetworkConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000, batch_size=8, learning_rate=5e-4, warmup_steps=100, ema_decay=0.0, validate_every=250
        )
    )

    def __post_init__(self) -> None:
        if self.network.model not in PRETRAINABLE:
            raise ValueError(
                f"self-supervised pretraining learns the encoder of {', '.join(PRETRAINABLE)} (network.model)"
            )


ENCODERS = {
    "dualpath": "dual-path encoder (CNN and Transformer branches and their fusion); decoder untrained",
    "unet": "MONAI U-Net encoder (down blocks and bottom); decoder untrained",
}


def load_ssl_config(path: str | Path | None, overrides: dict | None = None) -> SSLConfig:
    return load_train_config(SSLConfig, path, overrides, (("data", "data"), ("data", "probe")))


def weights_config(config: SSLConfig) -> dict:
    """What the pretrained weights declare: the encoder's network and its input layout, checked on ``--init``."""
    return {
        "network": config.network.to_dict(),
        "task": "ssl",
        "pretrained": ENCODERS[config.network.model],
        "modalities": config.data.modalities,
        "neighbours": config.data.neighbours,
        "seed": config.seed,
    }


def knn_probe(subjects, n_per_class: int, size: int, neighbours: int, seed: int = 0):
    """Tumour-centred and healthy (>= 10 voxels from any tumour) axial 2.5D patches of labelled subjects, and a
    function scoring a model's embeddings of them: leave-one-out k-NN accuracy (cosine, k = 5)."""
    rng = np.random.default_rng(seed)
    patches, labels = [], []
    for subject in subjects:
        volume = torch.stack([subject[m].data[0] for m in modality_names(subject)])
        tumour = region_masks(subject[LABEL_KEY].data[0].numpy())["WT"]
        far = (volume != 0).any(0).numpy() & (ndimage.distance_transform_edt(~tumour) >= 10)
        for cls, mask in ((1, tumour), (0, far)):
            coords = np.argwhere(mask)
            n = min(len(coords), max(1, n_per_class // len(subjects)))
            for c in coords[rng.choice(len(coords), size=n, replace=False)]:
                patches.append(plane_patch(volume, c, 2, size, neighbours))
                labels.append(cls)
    x, y = torch.stack(patches), torch.tensor(labels)

    @torch.no_grad()
    def accuracy(model: DINOModel) -> float:
        model.eval()
        emb = F.normalize(torch.cat([model.embed(chunk) for chunk in x.split(32)]), dim=-1)
        sim = emb @ emb.T
        sim.fill_diagonal_(-2.0)
        votes = y[sim.topk(5, dim=1).indices].float().mean(1)
        return float(((votes > 0.5).long() == y).float().mean())

    return accuracy


def run_pretraining(config: SSLConfig, out: Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """Pretrain and write ``out/weights`` (the teacher's encoder, config, logs, provenance); returns that folder."""
    if not config.data.data:
        raise MeddiffError("no volumes to pretrain on (--data PATH ... or data.data in the config)")
    torch.manual_seed(config.seed)
    cases = read_volumes(config.data.data)
    # one volume as the segmenter sees it: its modalities in their slots, the others zero
    subjects = [load_case(c, config.data.modalities, None, optional=config.data.modalities) for c in cases]
    dataset = PlaneViews(
        subjects,
        config.data.global_size,
        config.data.local_size,
        config.data.n_local,
        config.data.neighbours,
        seed=config.seed,
    )
    d = config.dino
    student = DINOModel(
        build_from_weights_config(weights_config(config)),
        DINOHead(config.network.channels[-1], d.hidden, d.bottleneck, d.prototypes),
    )
    objective = DINOObjective(student, config.train.steps, d.t_student, d.t_teacher, d.center_momentum, d.base_momentum)
    main = process_state().is_main_process
    validate = None
    if config.data.probe and main:
        probe_cases = [c for c in read_dataset(config.data.probe) if c.label is not None]
        probe_subjects = [
            load_case(c, config.data.modalities, None, optional=config.data.modalities) for c in probe_cases
        ]
        score = knn_probe(probe_subjects, config.data.probe_patches, config.data.global_size, config.data.neighbours)

        def validate(model: nn.Module) -> dict[str, float]:
            return {"knn_accuracy_teacher": score(objective.teacher), "knn_accuracy_student": score(model)}

    write_run_files(out, config, {"volumes": {c.case_id: {m: str(p) for m, p in c.images.items()} for c in cases}})
    train(
        student,
        dataset,
        objective,
        config.train,
        out,
        seed=config.seed,
        validate=validate,
        resume=resume,
        stop_at=stop_at,
        extra_state=[objective],
    )
    folder = out / "weights"
    if not main:
        return folder
    training = {"config": config_record(config, folder), "volumes": len(cases)}
    save_weights(folder, objective.teacher.backbone, {**weights_config(config), "training": training})
    record_run(folder, n_parameters(student.backbone), out, ("training_log.csv", "validation_log.csv"))
    return folder


def load_pretrained_encoder(model: nn.Module, folder: str | Path, segmenter: dict) -> int:
    """Copy the pretrained encoder of ``folder`` (``ssl pretrain`` weights) into ``model``, the network the
    segmenter's weights config ``segmenter`` describes. A different network or input layout is a one-line error
    naming the difference. Returns the number of tensors loaded."""
    pretrained, config = load_weights(folder, "ssl", build_from_weights_config)
    ours = SegNetworkConfig(**segmenter["network"]).architecture()
    theirs = SegNetworkConfig(**config["network"]).architecture()
    differ = [k for k in {**ours, **theirs} if ours.get(k) != theirs.get(k)]
    differ += [k for k in ("modalities", "neighbours") if segmenter[k] != config[k]]
    if differ:
        detail = ", ".join(
            f"{k}: {theirs.get(k, config.get(k))!r} vs {ours.get(k, segmenter.get(k))!r}" for k in differ
        )
        raise MeddiffError(f"the pretrained encoder does not fit this segmenter ({detail})", folder)
    learned = pretrained.state_dict()
    state = {k: learned[k] for k in encoder_keys(pretrained)}
    missing = [k for k in state if k not in model.state_dict()]
    if missing:
        raise MeddiffError(
            f"the pretrained encoder has tensors this segmenter lacks ({', '.join(missing[:3])})", folder
        )
    model.load_state_dict(state, strict=False)
    return len(state)
