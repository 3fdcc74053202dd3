"""The one training loop, on Accelerate: mixed precision, gradient accumulation, multi-GPU (``accelerate launch``),
EMA weights, atomic checkpoints with exact resume, and CSV/TensorBoard logs. Every model family trains here;
what differs (data set, loss) is passed in.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from meddiffusion.config import config_record
from meddiffusion.errors import MeddiffError
from meddiffusion.io import write_json
from meddiffusion.paths import CHECKPOINT, TRAINER_STATE
from meddiffusion.provenance import invocation

LOG = "training_log.csv"
VAL_LOG = "validation_log.csv"
#: config name -> (diffusers scheduler name, its power)
LR_SCHEDULES = {"cosine": ("cosine", 1.0), "poly": ("polynomial", 0.9)}


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-4
    #: "cosine", or "poly" (nnU-Net's (1 - step / steps) ** 0.9 decay)
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    log_every: int = 25
    validate_every: int = 500
    num_workers: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {tuple(LR_SCHEDULES)}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError("mixed_precision must be 'no', 'fp16' or 'bf16'")
        if self.steps < 1 or self.batch_size < 1 or self.gradient_accumulation < 1:
            raise ValueError("steps, batch_size and gradient_accumulation must be >= 1")


def _cpu_only() -> bool:
    """No accelerator here: Accelerate then runs several processes (``accelerate launch --multi_gpu``, torchrun)
    as one CPU group over gloo, instead of as independent single-process runs."""
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return not (
        torch.cuda.is_available()
        or (mps is not None and mps.is_available())
        or (xpu is not None and xpu.is_available())
    )


def process_state() -> PartialState:
    """This process's place in the run (one process, or one of several): the trainers write run files, weights
    and logs only on the main process."""
    return PartialState(cpu=_cpu_only())


def write_run_files(out: Path, config: Any, data_list: dict[str, Any]) -> bool:
    """Create the run folder and write ``config.json`` (paths relative to it) and ``data_list.json``, on the main
    process only. Returns whether this is the main process: the one that also writes the weights."""
    main = process_state().is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(config_record(config, out), out / "config.json")
        write_json(data_list, out / "data_list.json")
    return main


class _RangeSampler(Sampler[int]):
    """Indices ``start .. stop-1``: the data set maps each index to a fixed sample, so resume is exact."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


#: returns the loss, or (loss, {name: value}) to log more quantities (loss terms, their weights, timings)
LossFn = Callable[
    [torch.nn.Module, dict[str, torch.Tensor], torch.Generator], torch.Tensor | tuple[torch.Tensor, dict[str, float]]
]
ValidateFn = Callable[[torch.nn.Module], dict[str, float]]


def train(
    model: torch.nn.Module,
    dataset: Dataset,
    loss_fn: LossFn,
    config: TrainConfig,
    run_dir: str | Path,
    seed: int = 0,
    validate: ValidateFn | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    extra_state: Sequence[Any] = (),
) -> torch.nn.Module:
    """Train ``model`` for ``config.steps`` optimiser steps; returns it with its EMA weights loaded.

    ``run_dir/checkpoint`` is replaced atomically every ``checkpoint_every`` steps; ``resume=True`` continues
    from it with optimiser, LR schedule, EMA and RNG state restored. ``stop_at`` ends this invocation at
    that step (checkpointed) without changing the schedule, for time-boxed runs continued later.
    ``extra_state``: objects with ``state_dict``/``load_state_dict`` the loss keeps (e.g. learned loss
    weights), saved in and restored from the checkpoint with the rest.
    """
    started_as = invocation()  # the code this invocation starts with (read once: later edits do not count)
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise MeddiffError("holds a checkpoint already: pass --resume to continue it, or choose a new --out", run_dir)
    if resume and not checkpoint.exists():
        raise MeddiffError("has no checkpoint to resume from", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation,
        cpu=_cpu_only(),
    )
    set_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    name, power = LR_SCHEDULES[config.lr_schedule]
    # Accelerate steps a prepared scheduler once per process at every optimiser step: count in those units
    n = accelerator.num_processes
    lr_schedule = get_scheduler(
        name, optimizer, num_warmup_steps=config.warmup_steps * n, num_training_steps=config.steps * n, power=power
    )
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    ema.to(accelerator.device)
    if extra_state:
        accelerator.register_for_checkpointing(*extra_state)

    step, elapsed, segments = 0, 0.0, []
    if resume:
        accelerator.load_state(str(checkpoint))
        ema.load_state_dict(torch.load(checkpoint / "ema.pt", map_location="cpu", weights_only=False))
        ema.to(accelerator.device)
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        step, elapsed, segments = state["step"], state.get("elapsed_s", 0.0), state.get("segments", [])
    # a run resumed across sessions may span several commits: each invocation is recorded with its first step
    segments = [*segments, {"from_step": step, **started_as}]

    micro = config.batch_size * accelerator.num_processes
    per_step = micro * config.gradient_accumulation
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=_RangeSampler(step * per_step, config.steps * per_step),
        num_workers=config.num_workers,
        drop_last=True,
    )
    loader = accelerator.prepare(loader)
    # the loss's randomness (diffusion noise, timesteps) is reseeded for every micro-batch from (seed, micro-batch,
    # process): it differs between processes, and a resumed run draws exactly what an uninterrupted one would
    generator = torch.Generator(device=accelerator.device)
    micro_batch = step * config.gradient_accumulation
    writer = _tensorboard(run_dir) if accelerator.is_main_process else None
    bar = tqdm(total=config.steps, initial=step, desc="train", disable=not accelerator.is_main_process)
    # wall time counts across resumes (the checkpoint carries it): the log's elapsed_s is the run's training time
    started, running, extras = time.time() - elapsed, [], defaultdict(list)
    model.train()
    for batch in loader:
        generator.manual_seed(seed * 1_000_003 + 7919 * micro_batch + accelerator.process_index)
        micro_batch += 1
        with accelerator.accumulate(model):
            loss = loss_fn(model, batch, generator)
            if isinstance(loss, tuple):
                loss, logged = loss
                for key, value in logged.items():
                    extras[key].append(float(value))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
        running.append(loss.detach().item())
        if not accelerator.sync_gradients:
            continue
        ema.step(accelerator.unwrap_model(model).parameters())
        step += 1
        bar.update(1)
        if accelerator.is_main_process and (step % config.log_every == 0 or step == config.steps):
            mean = sum(running) / len(running)
            bar.set_postfix(loss=f"{mean:.4f}")
            row = {
                "step": step,
                "loss": mean,
                "lr": lr_schedule.get_last_lr()[0],
                "elapsed_s": round(time.time() - started, 1),
                **{key: sum(values) / len(values) for key, values in extras.items()},
            }
            _append_csv(run_dir / LOG, row)
            if writer:
                writer.add_scalar("loss", mean, step)
            running, extras = [], defaultdict(list)
        if (
            validate is not None
            and accelerator.is_main_process
            and (step % config.validate_every == 0 or step == config.steps)
        ):
            metrics = _with_ema(accelerator.unwrap_model(model), ema, validate)
            _append_csv(run_dir / VAL_LOG, {"step": step, **metrics})
            if writer:
                for key, value in metrics.items():
                    writer.add_scalar(f"val/{key}", value, step)
            model.train()
        if step % config.checkpoint_every == 0 or step in (config.steps, stop_at):
            state = {"step": step, "elapsed_s": round(time.time() - started, 1), "segments": segments}
            _save_checkpoint(accelerator, ema, run_dir, state)
        if step == stop_at:
            break
    bar.close()
    if writer:
        writer.close()
    unwrapped = accelerator.unwrap_model(model)
    ema.copy_to(unwrapped.parameters())
    return unwrapped.eval()


def _with_ema(model: torch.nn.Module, ema: EMAModel, fn: ValidateFn) -> dict[str, float]:
    """Run ``fn`` with the EMA weights swapped in, then restore the training weights."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.eval()
    try:
        return fn(model)
    finally:
        ema.restore(model.parameters())


def _save_checkpoint(accelerator: Accelerator, ema: EMAModel, run_dir: Path, state: dict[str, Any]) -> None:
    """Write the full state to a temporary folder, then swap it in: a crash never leaves a half checkpoint.
    With several processes, each writes its own RNG state: a stale folder is cleared before anyone writes, and the
    swap waits until all have written."""
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's RNG state is in the folder before it is swapped in
    if accelerator.is_main_process:
        torch.save(ema.state_dict(), tmp / "ema.pt")
        (tmp / TRAINER_STATE).write_text(json.dumps(state))
        final, old = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _tensorboard(run_dir: Path):
    """A TensorBoard writer when the optional ``tensorboard`` package is there; CSV logs are always written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def read_log(path: Path) -> tuple[dict[int, dict[str, float]], float]:
    """A run's log (``training_log.csv``, ``validation_log.csv``) as rows by step, the last of a step that a resume
    repeated, and the wall time of all its sessions, the steps repeated after a stop included. A resumed session's
    clock goes on from its checkpoint's (older runs restarted it at 0): the work a stop discarded is what the last
    session ran past the row it resumed after."""
    rows: dict[int, dict[str, float]] = {}
    discarded, last = 0.0, 0.0
    with path.open() as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            step, elapsed = int(values["step"]), values.get("elapsed_s", 0.0)
            if elapsed < last:  # a new session
                before = max((s for s in rows if s < step), default=None)
                base = rows[before].get("elapsed_s", 0.0) if before is not None else 0.0
                discarded += last - (base if base <= elapsed else 0.0)
            last = elapsed
            rows[step] = values
    return dict(sorted(rows.items())), discarded + last
