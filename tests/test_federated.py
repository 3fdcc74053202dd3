"""Federated training on Flower (issue #18): the aggregation and the local objective against hand computations,
and real federations (Flower's simulation runtime) on patches of the embedded real case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchio as tio
import yaml

pytest.importorskip("flwr")

from flwr.app import MessageType  # noqa: E402
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from meddiffusion.app.cli import main  # noqa: E402
from meddiffusion.app.fl import simulate  # noqa: E402
from meddiffusion.data.harmonise import LANDMARKS, fit_landmarks, harmonise  # noqa: E402
from meddiffusion.segmentation.federated import load_federated_config, regularised  # noqa: E402
from meddiffusion.segmentation.flower import UpdateAveraging, global_model  # noqa: E402
from meddiffusion.segmentation.predict import Segmenter  # noqa: E402
from meddiffusion.weights import WEIGHTS_FILE  # noqa: E402

TINY_RECIPE = {
    "data": {"patch_size": 32, "augment": False},
    "network": {"model": "dualpath", "channels": [8, 16, 32, 64], "d_model": 16, "n_heads": 2},
    "loss": {"reweighting": "none"},
    "train": {"batch_size": 2, "learning_rate": 0.001},
}


@pytest.fixture
def sites_config(real_crop, tmp_path):
    """Sites config writer: n sites, site k with ``cases[k]`` copies (case ids) of the real crop."""

    def write(n_sites: int = 2, cases: tuple[int, ...] = (), **federation) -> object:
        rows = ["case_id,flair,t1,t1ce,t2,label,convention"]
        sites = {}
        for k in range(n_sites):
            ids = [f"site{k}_case{j}" for j in range(cases[k] if cases else 1)]
            rows += [
                f"{i},{real_crop['flair']},{real_crop['t1']},{real_crop['t1ce']},{real_crop['t2']},"
                f"{real_crop['label']},brats2012"
                for i in ids
            ]
            sites[f"site{k}"] = {"train": ids}
        (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(TINY_RECIPE))
        settings = {"rounds": 1, "local_steps": 2, "min_sites": 1, "eval_patches": 2, **federation}
        config = {"recipe": "recipe.yaml", "data": "cases.csv", "federation": settings, "sites": sites}
        path = tmp_path / "sites.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def test_fedavg_of_two_known_updates_is_the_case_weighted_mean(sites_config, tmp_path):
    config = load_federated_config(sites_config(2))
    start = [a.numpy().copy() for a in global_model(config).state_dict().values()]
    strategy = UpdateAveraging(config, tmp_path / "run", 0, [a.copy() for a in start])
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=a.shape).astype(np.float32) for a in start] for _ in range(2)]
    cases = [3, 1]
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(u), n, {"site": f"site{k}"}))
        for k, (u, n) in enumerate(zip(updates, cases, strict=True))
    ]
    strategy.aggregate_fit(1, results, [])
    for g, a, u0, u1 in zip(strategy.arrays, start, *updates, strict=True):
        np.testing.assert_allclose(g, a + (3 * u0 + 1 * u1) / 4, rtol=1e-5, atol=1e-6)
    saved = load_file(str(tmp_path / "run" / "checkpoint" / WEIGHTS_FILE))
    first = next(iter(global_model(config).state_dict()))
    np.testing.assert_allclose(saved[first].numpy(), strategy.arrays[0], atol=1e-7)
    assert json.loads((tmp_path / "run" / "rounds.json").read_text())[0]["sites"] == 2


def test_the_local_objective_adds_exactly_lambda_times_the_squared_norm():
    model = torch.nn.Linear(3, 2)
    loss = torch.tensor(0.7)
    squared = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    assert float(regularised(loss, model, l2=0.01).detach()) == pytest.approx(0.7 + 0.01 * squared, rel=1e-6)
    anchor = [p.detach().clone() for p in model.parameters()]
    assert float(regularised(loss, model, 0.0, proximal=5.0, anchor=anchor).detach()) == pytest.approx(0.7)
    shifted = [a - 0.1 for a in anchor]
    n = sum(p.numel() for p in model.parameters())
    assert float(regularised(loss, model, 0.0, 5.0, shifted).detach()) == pytest.approx(0.7 + 2.5 * n * 0.01, rel=1e-5)


def test_harmonisation_puts_a_sites_landmarks_on_the_common_scale():
    rng = np.random.default_rng(0)
    volume = np.zeros((20, 20, 20), np.float32)
    volume[5:15, 5:15, 5:15] = rng.gamma(2.0, 0.2, size=(10, 10, 10)) + 0.05
    subject = tio.Subject(flair=tio.ScalarImage(tensor=torch.from_numpy(volume.copy())[None]))
    out = harmonise(subject, fit_landmarks([subject]))["flair"].data[0].numpy()
    brain = out[volume != 0]
    np.testing.assert_allclose(np.percentile(brain, LANDMARKS), np.asarray(LANDMARKS) / 100, atol=0.01)
    assert (out[volume == 0] == 0).all()


def test_a_real_two_site_federation_writes_global_weights_a_segmenter_loads(sites_config, tmp_path):
    out = tmp_path / "run"
    folder = simulate(load_federated_config(sites_config(2)), out)
    log = json.loads((out / "rounds.json").read_text())
    assert [r["sites"] for r in log] == [2] and log[0]["failures"] == 0
    assert set(log[0]["fit"]) == {"site0", "site1"} and set(log[0]["eval"]) == {"site0", "site1"}
    start = global_model(load_federated_config(sites_config(2))).state_dict()
    trained = load_file(str(folder / WEIGHTS_FILE))
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    assert Segmenter.from_pretrained(folder).model is not None
    # the run resumes from its checkpoint: one more round, logged as round 2
    args = ["fl", "simulate", "--sites", str(sites_config(2)), "--out", str(out), "--rounds", "2", "--resume"]
    assert main(args) == 0
    assert [r["round"] for r in json.loads((out / "rounds.json").read_text())] == [1, 2]


def test_secure_aggregation_gives_the_plain_average_up_to_quantisation(sites_config, tmp_path):
    # unequal sites (3 cases and 1): the masked sum must carry the n_k / N weights as the plain average does
    plain = simulate(load_federated_config(sites_config(2, (3, 1))), tmp_path / "plain")
    secure = simulate(load_federated_config(sites_config(2, (3, 1), secure=True)), tmp_path / "secure")
    assert json.loads((tmp_path / "secure" / "rounds.json").read_text())[0]["secure"]
    a, b = load_file(str(plain / WEIGHTS_FILE)), load_file(str(secure / WEIGHTS_FILE))
    start = global_model(load_federated_config(sites_config(2))).state_dict()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    error = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-3 and error < 1e-4


def test_a_site_that_drops_out_mid_round_does_not_stop_the_federation(sites_config, tmp_path):
    def offline(msg, context, call_next):  # site 2 receives its training message, then goes away
        if msg.metadata.message_type == MessageType.TRAIN and int(context.node_config["partition-id"]) == 2:
            raise ConnectionError("site 2 went offline")
        return call_next(msg, context)

    config = load_federated_config(sites_config(3, rounds=2, min_sites=2))
    simulate(config, tmp_path / "run", client_mods=[offline])
    log = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert [(r["sites"], r["failures"]) for r in log] == [(2, 1), (2, 1)]
    assert (tmp_path / "run" / "weights" / WEIGHTS_FILE).is_file()


def test_fl_simulate_refuses_unknown_cases_in_one_line(sites_config, tmp_path, capsys):
    path = sites_config(2)
    config = yaml.safe_load(path.read_text())
    config["sites"]["site1"]["train"] = ["nobody"]
    path.write_text(yaml.safe_dump(config))
    assert main(["fl", "simulate", "--sites", str(path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nobody" in err[0]
    assert not (tmp_path / "x").exists()
