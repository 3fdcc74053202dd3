"""Federated training of the segmenter, the part that does not depend on the engine moving the weights
(Flower: ``segmentation.flower``): the sites, what one site does in a round, and the proposal's objective.

Global objective: min_θ Σ_k n_k / N · L_k(θ; D_k) + λ‖θ‖². Each site minimises its own hybrid loss plus λ‖θ‖²
(and, for FedProx, μ/2 ‖θ − θ_global‖²) for E steps from the global weights and returns its *update*
θ_k − θ_global; the server adds the n_k / N weighted mean of the updates to the global weights (FedAvg).
Sending updates rather than weights keeps SecAgg+'s fixed-point range small (its values are clipped to
±``clipping_range``), so quantisation costs nothing measurable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from meddiffusion.config import load_train_config
from meddiffusion.data.harmonise import fit_landmarks, harmonise
from meddiffusion.data.layouts import CaseFiles, read_dataset
from meddiffusion.data.prepare import load_case
from meddiffusion.errors import MeddiffError
from meddiffusion.segmentation.coding import activate, classes_to_labels, decode
from meddiffusion.segmentation.data import SegPatches
from meddiffusion.segmentation.train import SegTrainConfig, load_seg_config, make_loss, region_dice
from meddiffusion.weights import CONFIG_FILE


@dataclass
class FederationSettings:
    rounds: int = 20
    #: optimiser steps each site takes per round (E)
    local_steps: int = 50
    #: λ of the global objective's λ‖θ‖²
    l2: float = 1e-6
    #: μ of FedProx's μ/2 ‖θ − θ_global‖² (0: plain FedAvg)
    proximal: float = 0.0
    #: SecAgg+ (Flower): the server sees only the sum of the masked updates
    secure: bool = False
    #: SecAgg+'s fixed-point range for the updates (values beyond are clipped)
    clipping_range: float = 1.0
    #: a round goes on with this many sites (a site that drops out leaves the others to finish it)
    min_sites: int = 2
    #: map each site's intensities to a common scale by landmarks fitted on that site's own cases
    harmonise: bool = False
    #: torch threads per site (the simulation runs cores / threads sites at once)
    threads: int = 1
    #: fixed patches of each site's cases on which the clients report the global model's Dice every round
    eval_patches: int = 16

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_steps < 1:
            raise ValueError("rounds and local_steps must be >= 1")
        if self.l2 < 0 or self.proximal < 0 or self.clipping_range <= 0:
            raise ValueError("l2 and proximal must be >= 0, clipping_range > 0")
        if self.min_sites < 1:
            raise ValueError("min_sites must be >= 1")


@dataclass
class FederatedConfig:
    seed: int = 0
    #: the segmentation config every site trains with (network, loss, patches, batch, learning rate)
    recipe: str = ""
    #: the data set the sites' case ids refer to (a folder or CSV list)
    data: str = ""
    federation: FederationSettings = field(default_factory=FederationSettings)
    #: site name -> {"train": [case ids], "test": [case ids held out for the benchmark, never trained on]}
    sites: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, site in self.sites.items():
            if not isinstance(site, dict) or not site.get("train"):
                raise ValueError(f"site {name!r} needs a non-empty 'train' list of case ids")
            if unknown := sorted(set(site) - {"train", "test"}):
                raise ValueError(f"site {name!r}: unknown key(s) {unknown} (known: train, test)")
        seen: dict[str, str] = {}
        for name, site in self.sites.items():
            for case in [*site["train"], *site.get("test", [])]:
                if case in seen:
                    raise ValueError(f"case {case} is in site {seen[case]!r} and in {name!r}")
                seen[case] = name

    @property
    def site_names(self) -> list[str]:
        return list(self.sites)

    @property
    def weights(self) -> dict[str, int]:
        """n_k: the number of training cases at each site (FedAvg weights n_k / N)."""
        return {name: len(site["train"]) for name, site in self.sites.items()}

    def seg_config(self) -> SegTrainConfig:
        return load_seg_config(self.recipe or None, {"seed": self.seed})


def load_federated_config(path: str | Path | None, overrides: dict | None = None) -> FederatedConfig:
    """``configs/fl_sites.yaml``-style file (paths relative to it), updated by ``section.key`` overrides."""
    config = load_train_config(FederatedConfig, path, overrides, (("", "recipe"), ("", "data")))
    if not config.sites:
        raise MeddiffError("no sites defined (a 'sites' mapping of name -> train / test case ids)", path or "")
    return config


#: the run folder's per-round checkpoint: the global weights as a weights folder whose config names the round
CHECKPOINT = "checkpoint"


def check_run(config: FederatedConfig, out: Path, resume: bool) -> Path | None:
    """What would otherwise fail inside a federation, as one line before it starts: every site's cases exist, a
    round can complete, and the run folder is new (or holds a checkpoint to resume). Returns that checkpoint."""
    for name in config.site_names:
        site_cases(config, name, "train")
        site_cases(config, name, "test")
    if config.federation.min_sites > len(config.sites):
        raise MeddiffError(f"federation.min_sites {config.federation.min_sites} > {len(config.sites)} sites")
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise MeddiffError("holds a federation checkpoint already: pass --resume to continue it, or a new --out", out)
    if resume and not (checkpoint / CONFIG_FILE).is_file():
        raise MeddiffError("has no federation checkpoint to resume from", out)
    return checkpoint if resume else None


def site_cases(config: FederatedConfig, site: str, part: str = "train") -> list[CaseFiles]:
    """The case files of one site's ``train`` or ``test`` list, in the order the config names them."""
    if site not in config.sites:
        raise MeddiffError(f"unknown site {site!r} (sites: {', '.join(config.site_names)})")
    if not config.data:
        raise MeddiffError("no data set given (data: in the sites config)")
    by_id = {c.case_id: c for c in read_dataset(config.data)}
    wanted = config.sites[site].get(part, [])
    if missing := [c for c in wanted if c not in by_id]:
        raise MeddiffError(f"site {site}: case(s) {', '.join(missing)} are not in the data set", config.data)
    return [by_id[c] for c in wanted]


@dataclass
class Site:
    """One site's data as its client trains on it: the training patches, fixed evaluation patches, and the
    intensity landmarks its cases were harmonised with (None: not harmonised)."""

    name: str
    n_cases: int
    patches: SegPatches
    eval_batch: dict[str, torch.Tensor]
    landmarks: dict | None = None


def load_site(config: FederatedConfig, name: str) -> Site:
    """Read and prepare a site's training cases (harmonised on that site's own landmarks if configured)."""
    seg = config.seg_config()
    cases = site_cases(config, name)
    subjects = [load_case(c, seg.data.modalities, seg.data.spacing, seg.data.optional) for c in cases]
    landmarks = fit_landmarks(subjects) if config.federation.harmonise else None
    if landmarks:
        subjects = [harmonise(s, landmarks) for s in subjects]
    seed = config.seed * 1000 + config.site_names.index(name)
    patches = SegPatches(
        subjects,
        seg.data.patch_size,
        seg.data.neighbours,
        seg.data.foreground_p,
        seg.data.augment,
        seed=seed,
        optional=seg.data.optional,
        modality_dropout=seg.data.modality_dropout,
    )
    plain = SegPatches(subjects, seg.data.patch_size, seg.data.neighbours, 0.5, augment=False, seed=seed + 500)
    eval_batch = next(_batches(plain, 0, 1, config.federation.eval_patches))
    return Site(name, len(cases), patches, eval_batch, landmarks)


def regularised(loss: torch.Tensor, model: nn.Module, l2: float, proximal: float = 0.0, anchor=None) -> torch.Tensor:
    """The local objective: ``loss`` + λ‖θ‖² (+ μ/2 ‖θ − θ_global‖² with ``anchor`` the global parameters)."""
    params = list(model.parameters())
    total = loss
    if l2:
        total = total + l2 * sum((p**2).sum() for p in params)
    if proximal:
        if anchor is None:
            raise ValueError("the proximal term needs the global parameters (anchor)")
        total = total + 0.5 * proximal * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
    return total


def round_learning_rate(base: float, completed: int, rounds: int) -> float:
    """nnU-Net's poly decay over the federation, constant within a round: base · (1 − r / R)^0.9."""
    return base * (1.0 - completed / rounds) ** 0.9


def _batches(patches: SegPatches, start: int, steps: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``start .. start + steps`` of the site's fixed patch sequence (item i is a pure function of i, so
    round r of a resumed federation draws what an uninterrupted one would)."""
    for step in range(start, start + steps):
        yield default_collate([patches[step * batch_size + j] for j in range(batch_size)])


def local_update(
    model: nn.Module,
    site: Site,
    seg: SegTrainConfig,
    settings: FederationSettings,
    completed_rounds: int,
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Train ``model`` (holding the global weights) for E steps on the site's data; return the update θ_k − θ
    (one array per state-dict entry, in order) and the mean loss terms of the round."""
    torch.set_num_threads(max(settings.threads, 1))
    torch.manual_seed(seg.seed * 7919 + completed_rounds)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    anchor = [start[name] for name, _ in model.named_parameters()]  # θ_global, for the proximal term
    loss_fn, _ = make_loss(seg.loss, seg.network.output)
    lr = round_learning_rate(seg.train.learning_rate, completed_rounds, settings.rounds)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    logged: dict[str, list[float]] = {}
    model.train()
    first = completed_rounds * settings.local_steps
    for batch in _batches(site.patches, first, settings.local_steps, seg.train.batch_size):
        loss, terms = loss_fn(model, batch, None)
        total = regularised(loss, model, settings.l2, settings.proximal, anchor)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        for key, value in {"loss": float(total.detach()), **terms}.items():
            logged.setdefault(key, []).append(float(value))
    update = [(v.detach() - start[k]).cpu().numpy() for k, v in model.state_dict().items()]
    return update, {k: float(np.mean(v)) for k, v in logged.items()}


@torch.no_grad()
def patch_dice(model: nn.Module, site: Site, output: str) -> dict[str, float]:
    """Dice of WT / TC / ET on the site's fixed evaluation patches (the clients' per-round local metric)."""
    model.eval()
    probs = activate(model(site.eval_batch["image"]), output)
    pred = decode(probs.movedim(1, 0).numpy(), output)
    return region_dice(pred, classes_to_labels(site.eval_batch["label"][:, 0].numpy()))
