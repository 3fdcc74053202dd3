"""Run by tests/test_distributed.py under ``accelerate launch --num_processes 2``: a few steps of the shared
training loop, recording per process which data items each step used and a checksum of the weights after it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from meddiffusion.training import TrainConfig, process_state, train


class Items(Dataset):
    """Item ``i`` carries its own index, so each process can report what it was given."""

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        return {"index": torch.tensor(index), "x": torch.randn(4, generator=g), "y": torch.randn(1, generator=g)}


def main(run: Path, steps: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    seen: list[list[int]] = []

    def loss_fn(net, batch, generator):
        seen.append(batch["index"].tolist())
        return torch.nn.functional.mse_loss(net(batch["x"]), batch["y"])

    config = TrainConfig(
        steps=steps, batch_size=3, learning_rate=0.1, warmup_steps=0, ema_decay=0.0, checkpoint_every=2, log_every=1
    )
    model = train(model, Items(), loss_fn, config, run, seed=0)
    state = process_state()
    checksum = float(sum(p.double().sum() for p in model.parameters()))
    record = {"rank": state.process_index, "world": state.num_processes, "seen": seen, "checksum": checksum}
    (run / f"worker_{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
