"""The multi-process path, as users run it (``accelerate launch --multi_gpu --num_processes 2``), on CPU: two
processes over gloo. Ranks hold identical weights, the data is sharded, only rank 0 writes, and a two-process
checkpoint resumes in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meddiffusion.training import TrainConfig, train

WORKER = Path(__file__).parent / "workers" / "distributed_train.py"


def _free_port() -> int:
    """A loopback port nobody listens on (the default 29500 may still be held by the previous launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_shard_the_data_agree_on_weights_and_resume_in_one(tmp_path):
    run = tmp_path / "run"
    _launch(str(WORKER), str(run), "4")
    workers = [json.loads((run / f"worker_{r}.json").read_text()) for r in (0, 1)]
    assert [w["world"] for w in workers] == [2, 2]
    assert workers[0]["checksum"] == pytest.approx(workers[1]["checksum"], abs=1e-12)  # identical weights
    for a, b in zip(workers[0]["seen"], workers[1]["seen"], strict=True):
        assert len(a) == len(b) == 3 and not set(a) & set(b)  # no item seen by both ranks in a step
    assert len({i for w in workers for step in w["seen"] for i in step}) == 4 * 2 * 3  # nothing repeated
    # only rank 0 logs: one row per step
    rows = (run / "training_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    checkpoint = run / "checkpoint"
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    # the two-process checkpoint at step 4 continues in one process
    config = TrainConfig(steps=6, batch_size=3, learning_rate=0.1, warmup_steps=0, ema_decay=0.0, checkpoint_every=2)
    sys.path.insert(0, str(WORKER.parent))
    try:
        from distributed_train import Items
    finally:
        sys.path.pop(0)
    model = train(torch.nn.Linear(4, 1), Items(), _mse, config, run, seed=0, resume=True)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _mse(net, batch, generator):
    return torch.nn.functional.mse_loss(net(batch["x"]), batch["y"])


def test_segmentation_trainer_runs_as_two_processes(real_crop, tmp_path):
    data = tmp_path / "cases.csv"
    data.write_text(
        "case_id,flair,t1ce,label,convention\n"
        f"hg,{real_crop['flair']},{real_crop['t1ce']},{real_crop['label']},brats2012\n"
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data: {data: cases.csv, modalities: [flair, t1ce], patch_size: 32}\n"
        "network: {channels: [8, 16, 32, 64]}\n"
        "loss: {gamma: 0.0}\n"
        "train: {steps: 4, batch_size: 2, warmup_steps: 1, log_every: 1, checkpoint_every: 2, threads: 1}\n"
    )
    _launch("-m", "meddiffusion.app.cli", "seg", "train", "--config", str(config), "--out", str(tmp_path / "run"))
    run = tmp_path / "run"
    assert (run / "weights" / "model.safetensors").is_file()
    assert [r.split(",")[0] for r in (run / "training_log.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4"]
    assert (run / "checkpoint" / "random_states_1.pkl").is_file()
