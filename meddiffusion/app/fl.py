"""``meddiff fl simulate``: every site of a sites config trained on this machine by Flower's simulation runtime,
the same ServerApp and ClientApp a deployment runs (``segmentation.flower``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from meddiffusion.errors import MeddiffError
from meddiffusion.segmentation.federated import FederatedConfig, site_cases


def check_run(config: FederatedConfig, out: Path, resume: bool) -> None:
    """What would otherwise fail inside the federation, as one line before it starts: every site's cases exist,
    the run folder is new (or holds a checkpoint to resume)."""
    for name in config.site_names:
        site_cases(config, name, "train")
        site_cases(config, name, "test")
    checkpoint = out / "checkpoint"
    if checkpoint.exists() and not resume:
        raise MeddiffError("holds a federation checkpoint already: pass --resume to continue it, or a new --out", out)
    if resume and not (checkpoint / "state.json").is_file():
        raise MeddiffError("has no federation checkpoint to resume from", out)
    if config.federation.min_sites > len(config.sites):
        raise MeddiffError(f"federation.min_sites {config.federation.min_sites} > {len(config.sites)} sites")


def simulate(config: FederatedConfig, out: str | Path, resume: bool = False, client_mods=()) -> Path:
    """Run the federation with one simulated SuperNode per site (``threads`` cores each, as many at once as the
    machine's cores allow); returns the final global weights folder. ``client_mods``: extra Flower client mods
    (the tests drop a site mid-round with one)."""
    out = Path(out)
    check_run(config, out, resume)
    from flwr.simulation import run_simulation

    from meddiffusion.segmentation.flower import make_client_app, make_server_app

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=make_server_app(config, out, resume),
        client_app=make_client_app(config, client_mods),
        num_supernodes=len(config.sites),
        backend_config={
            "client_resources": {"num_cpus": config.federation.threads, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": False},
        },
    )
    weights = out / "weights"
    if not (weights / "config.json").is_file():
        raise MeddiffError("the federation ended without global weights (see Flower's log above)", out)
    return weights
