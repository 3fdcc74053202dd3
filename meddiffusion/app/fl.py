"""``meddiff fl simulate``: every site of a sites config trained on this machine by Flower's simulation runtime,
the same ServerApp and ClientApp a deployment runs (``segmentation.flower``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from meddiffusion.errors import MeddiffError
from meddiffusion.segmentation.federated import FederatedConfig, check_run


def simulate(config: FederatedConfig, out: str | Path, resume: bool = False, client_mods=()) -> Path:
    """Run the federation with one simulated SuperNode per site (``threads`` cores each, as many at once as the
    machine's cores allow); returns the final global weights folder. ``client_mods``: extra Flower client mods
    (the tests drop a site mid-round with one)."""
    out = Path(out)
    check_run(config, out, resume)  # one line before Flower and Ray start
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
