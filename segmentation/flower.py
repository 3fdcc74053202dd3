"""The segmenter's federated training on Flower (``flwr``, the ``fl`` extra): a ServerApp and a ClientApp.

One code for both runtimes: ``meddiff fl simulate`` builds the apps around a loaded config and runs every site on
this machine (Flower's simulation runtime); ``server_app`` / ``client_app`` below are the same apps for a real
deployment (``flower-superlink`` + one ``flower-supernode`` per hospital + ``flwr run``; README), reading the
config from the run config (server) and from each SuperNode's node config (``site``, ``config``).

Aggregation is Flower's: its FedAvg strategy averages the sites' updates weighted by n_k / N (the number of
training cases at each site), and with ``secure: true`` its SecAgg+ workflow does so over masked updates, so the
server never sees one site's update. The server adds the mean update to the global weights, checkpoints them
every round and resumes from that checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from safetensors.torch import load_file

from meddiffusion.config import config_record
from meddiffusion.io import write_json
from meddiffusion.provenance import code_state
from meddiffusion.segmentation.federated import (
    CHECKPOINT,
    FederatedConfig,
    Site,
    check_run,
    load_federated_config,
    load_site,
    local_update,
    patch_dice,
)
from meddiffusion.segmentation.models import build_from_weights_config, n_parameters
from meddiffusion.segmentation.train import weights_config
from meddiffusion.weights import WEIGHTS_FILE, read_config, record_run, save_weights

ROUNDS_LOG = "rounds.json"
#: a process keeps each site's prepared data: a simulation's workers serve many rounds and several sites
_SITES: dict[tuple[str, str], Site] = {}


def _site(config: FederatedConfig, name: str) -> Site:
    key = (json.dumps(dataclasses.asdict(config), sort_keys=True), name)
    if key not in _SITES:
        _SITES[key] = load_site(config, name)
    return _SITES[key]


def global_model(config: FederatedConfig) -> torch.nn.Module:
    """The network every site and the server hold, built by the segmentation builder (seeded: the same start)."""
    torch.manual_seed(config.seed)
    return build_from_weights_config(weights_config(config.seg_config()))


def _arrays(model: torch.nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def _load_arrays(model: torch.nn.Module, arrays: list[np.ndarray]) -> torch.nn.Module:
    keys = list(model.state_dict())
    model.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays, strict=True)})
    return model


class SiteClient(NumPyClient):
    """One hospital: trains the global model on its own cases for E steps and returns the update."""

    def __init__(self, config: FederatedConfig, site: str) -> None:
        self.config, self.name = config, site

    def fit(self, parameters, fit_config):
        site = _site(self.config, self.name)
        model = _load_arrays(global_model(self.config), parameters)
        update, metrics = local_update(
            model, site, self.config.seg_config(), self.config.federation, int(fit_config["completed"])
        )
        return update, site.n_cases, {**metrics, "site": self.name}

    def evaluate(self, parameters, eval_config):
        site = _site(self.config, self.name)
        model = _load_arrays(global_model(self.config), parameters)
        dice = patch_dice(model, site, self.config.seg_config().network.output)
        return 1.0 - float(np.mean(list(dice.values()))), len(site.eval_batch["image"]), {**dice, "site": self.name}


def optional_secaggplus(msg: Message, context: Context, call_next) -> Message:
    """Flower's SecAgg+ client side, for the rounds the server runs it in (a plain round passes through)."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def make_client_app(config: FederatedConfig | None = None, mods: Sequence = ()) -> ClientApp:
    """The ClientApp. In simulation ``config`` is given and node ``partition-id`` k is the k-th site; deployed,
    each SuperNode names its site and its copy of the sites config: ``--node-config "site='upenn' config='...'"``.
    ``mods``: Flower client mods run before the optional SecAgg+ one."""

    def client_fn(context: Context) -> Client:
        node = context.node_config
        cfg = config or load_federated_config(str(node["config"]))
        name = str(node["site"]) if "site" in node else cfg.site_names[int(node["partition-id"])]
        return SiteClient(cfg, name).to_client()

    return ClientApp(client_fn=client_fn, mods=[*mods, optional_secaggplus])


class UpdateAveraging(FedAvg):
    """Flower's FedAvg over the sites' updates: global += Σ n_k / N · (θ_k − θ). Checkpoints every round."""

    def __init__(self, config: FederatedConfig, out: Path, start_round: int, arrays: list[np.ndarray]) -> None:
        settings = config.federation
        n_sites = len(config.sites)
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=min(settings.min_sites, n_sites),
            min_evaluate_clients=min(settings.min_sites, n_sites),
            min_available_clients=n_sites,
            accept_failures=True,
            on_fit_config_fn=self._fit_config,
            fit_metrics_aggregation_fn=weighted_mean,
            evaluate_metrics_aggregation_fn=weighted_mean,
            initial_parameters=ndarrays_to_parameters(arrays),
        )
        self.config, self.out, self.start_round = config, out, start_round
        self.arrays = arrays
        self.model = global_model(config)
        self.payload = int(sum(a.nbytes for a in arrays))
        log = out / ROUNDS_LOG
        self.log: list[dict] = json.loads(log.read_text()) if start_round and log.exists() else []
        self.started = 0.0

    def _fit_config(self, server_round: int) -> dict[str, Scalar]:
        self.started = time.perf_counter()
        return {"completed": self.start_round + server_round - 1}

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        mean_update, _ = super().aggregate_fit(server_round, results, failures)
        if mean_update is None:  # no site finished the round: the global weights stay
            return None, {}
        self.arrays = [g + d for g, d in zip(self.arrays, parameters_to_ndarrays(mean_update), strict=True)]
        done = self.start_round + server_round
        self.log.append(
            {
                "round": done,
                "seconds": time.perf_counter() - self.started,
                "sites": len(results),
                "failures": len(failures),
                "secure": self.config.federation.secure,
                # the global weights go down to every site and one update per site comes back (float32 payload)
                "bytes_down": self.payload * (len(results) + len(failures)),
                "bytes_up": self.payload * len(results),
                "fit": {str(r.metrics.get("site")): _plain(r.metrics) for _, r in results},
            }
        )
        self._checkpoint(done)
        record = self.log[-1]
        losses = [m.get("loss", float("nan")) for m in record["fit"].values()]
        print(
            f"round {done}/{self.config.federation.rounds}: {record['seconds']:.0f} s, {len(results)} site(s), "
            f"{len(failures)} failed, mean local loss {np.mean(losses):.4f}",
            file=sys.stderr,
            flush=True,
        )
        return ndarrays_to_parameters(self.arrays), {}

    def aggregate_evaluate(self, server_round, results, failures):
        if self.log and results:
            self.log[-1]["eval"] = {str(r.metrics.get("site")): _plain(r.metrics) for _, r in results}
            write_json(self.log, self.out / ROUNDS_LOG)
        return super().aggregate_evaluate(server_round, results, failures)

    def _checkpoint(self, done: int) -> None:
        """The global weights after round ``done``, as a weights folder whose config also names that round."""
        _load_arrays(self.model, self.arrays)
        save_weights(self.out / CHECKPOINT, self.model, {**weights_config(self.config.seg_config()), "round": done})
        write_json(self.log, self.out / ROUNDS_LOG)


def weighted_mean(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """The sites' numeric metrics averaged with their weights (Flower's history of the federation)."""
    total = sum(n for n, _ in results) or 1
    keys = {k for _, m in results for k, v in m.items() if isinstance(v, (int, float))}
    return {k: sum(n * float(m.get(k, 0.0)) for n, m in results) / total for k in sorted(keys)}


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "site"}


def _start(config: FederatedConfig, out: Path, resume: bool) -> tuple[int, list[np.ndarray]]:
    """(rounds already done, global weights): from the run folder's checkpoint, or a fresh seeded network."""
    checkpoint = check_run(config, out, resume)
    model = global_model(config)
    if checkpoint is None:
        return 0, _arrays(model)
    model.load_state_dict(load_file(str(checkpoint / WEIGHTS_FILE)))
    return int(read_config(checkpoint)["round"]), _arrays(model)


def run_server(grid: Grid, context: Context, config: FederatedConfig, out: Path, resume: bool = False) -> Path:
    """The server's whole job: rounds of fit (local training, aggregation) and evaluate; the final global weights
    go to ``out/weights`` (a weights folder ``seg predict --weights`` takes)."""
    code_state()
    out.mkdir(parents=True, exist_ok=True)
    done, arrays = _start(config, out, resume)
    settings = config.federation
    write_json(config_record(config, out), out / "config.json")
    strategy = UpdateAveraging(config, out, done, arrays)
    if done < settings.rounds:
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=settings.rounds - done), strategy=strategy
        )
        fit = (
            SecAggPlusWorkflow(
                num_shares=1.0,
                reconstruction_threshold=0.5,
                max_weight=float(max(config.weights.values())),
                clipping_range=settings.clipping_range,
            )
            if settings.secure
            else None
        )
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)
    model = _load_arrays(global_model(config), strategy.arrays)
    seg = config.seg_config()
    record = {"config": config_record(config, out / "weights"), "rounds": strategy.log}
    folder = save_weights(out / "weights", model, {**weights_config(seg), "training": {"federated": record}})
    record_run(folder, n_parameters(model), out, (ROUNDS_LOG,))
    return folder


def make_server_app(config: FederatedConfig | None = None, out: Path | None = None, resume: bool = False) -> ServerApp:
    """The ServerApp. In simulation the config and run folder are given; deployed, the run config names them
    (``flwr run . --run-config "config='configs/fl_sites.yaml' out='runs/fl'"``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = context.run_config
        cfg = config or load_federated_config(str(run["config"]))
        run_server(grid, context, cfg, out or Path(str(run["out"])), resume or bool(run.get("resume", False)))

    return app


server_app = make_server_app()
client_app = make_client_app()
