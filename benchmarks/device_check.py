"""GPU check, for a task that is lent a GPU machine: the CUDA paths of the shipped models and of the training loop,
against the same code on the CPU, and their speed.

    python benchmarks/device_check.py --case DIR --out OUT

``DIR`` holds one BraTS case as ``{flair,t1,t1ce,t2,seg}.nii`` (read with nibabel: the device image lacks
SimpleITK, which TorchIO's readers need). Checks, each recorded in ``OUT/device_check.json`` with its error if it
fails: (1) ``seg predict`` with the shipped segmenter on CUDA and on the CPU (label agreement, Dice to the expert
label, seconds per volume); (2) the shipped regression SR model on CUDA and the CPU (PSNR between them) and the
shipped diffusion default at 2x on a 256 x 256 x 155 volume (seconds); (3) the segmentation recipe's training
step (patch 128, batch 8, four modalities 2.5D) in fp32 and bf16 (steps per second), and the shared Accelerate
loop with bf16 mixed precision on CUDA (loss finite and falling).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

MODALITIES = ("flair", "t1", "t1ce", "t2")
DEVICE = "cuda"


def read_case(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    arrays = {m: np.asarray(nib.load(folder / f"{m}.nii").dataobj).astype(np.float32) for m in (*MODALITIES, "seg")}
    return arrays, nib.load(folder / "flair.nii").affine


def subject(arrays: dict[str, np.ndarray], affine: np.ndarray):
    import torchio as tio

    s = tio.Subject(**{m: tio.ScalarImage(tensor=torch.from_numpy(arrays[m])[None], affine=affine) for m in MODALITIES})
    s["case_id"] = "device_check"
    return s


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 1) -> tuple[object, float]:
    """``fn()``'s result and its fastest wall time over ``repeats`` runs (the device drained before and after)."""
    out, times = None, []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - start)
    return out, float(min(times))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def check_segmentation(arrays, affine) -> dict:
    from meddiffusion.segmentation.predict import Segmenter

    ref = arrays["seg"] > 0
    gpu = Segmenter.from_pretrained(device=DEVICE)
    gpu.predict(subject(arrays, affine))  # warm-up (cuDNN autotuning, allocator)
    labels_gpu, seconds_gpu = timed(lambda: gpu.predict(subject(arrays, affine)), repeats=3)
    cpu = Segmenter.from_pretrained(device="cpu")
    start = time.perf_counter()
    labels_cpu = cpu.predict(subject(arrays, affine))
    return {
        "shape": list(arrays["flair"].shape),
        "seconds_cuda": seconds_gpu,
        "seconds_cpu_16_cores": time.perf_counter() - start,
        "label_agreement": float((labels_gpu == labels_cpu).mean()),
        "wt_dice_cuda_vs_cpu": dice(labels_gpu > 0, labels_cpu > 0),
        "wt_dice_to_expert_cuda": dice(labels_gpu > 0, ref),
        "wt_dice_to_expert_cpu": dice(labels_cpu > 0, ref),
    }


def check_sr(arrays) -> dict:
    from meddiffusion.sr.degradation import degrade
    from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions

    t1 = arrays["t1"]
    volume = np.zeros((256, 256, 155), np.float32)
    offset = [(256 - t1.shape[0]) // 2, (256 - t1.shape[1]) // 2, 0]
    volume[offset[0] : offset[0] + t1.shape[0], offset[1] : offset[1] + t1.shape[1], : t1.shape[2]] = t1[..., :155]
    low = degrade(volume, 2, "inplane")
    affine, spacing = np.diag([2.0, 2.0, 1.0, 1.0]), (2.0, 2.0, 1.0)
    options = UpscaleOptions(scale=2, progress=False)
    out = {"input_shape": list(low.shape)}
    unet_gpu, unet_cpu = SRPipeline.from_pretrained("sr-unet", DEVICE), SRPipeline.from_pretrained("sr-unet", "cpu")
    slab = low[..., 70:86]
    a = unet_gpu.upscale(slab, affine, spacing, options).volume
    b = unet_cpu.upscale(slab, affine, spacing, options).volume
    peak = float(np.abs(b).max())
    out["unet_psnr_cuda_vs_cpu_db"] = float(10 * np.log10(peak**2 / max(np.mean((a - b) ** 2), 1e-20)))
    diffusion = SRPipeline.from_pretrained("sr-diffusion", DEVICE)
    diffusion.upscale(slab, affine, spacing, options)  # warm-up
    _, out["diffusion_default_seconds_cuda"] = timed(lambda: diffusion.upscale(low, affine, spacing, options))
    _, out["unet_seconds_cuda"] = timed(lambda: unet_gpu.upscale(low, affine, spacing, options))
    return out


def recipe_batches(arrays, n: int, rng: np.random.Generator) -> list[dict[str, torch.Tensor]]:
    """Batches of the recipe's inputs: 2.5D patches (a plane and its two neighbours per modality), labels 0-3."""
    from meddiffusion.data.prepare import brain_normalise
    from meddiffusion.segmentation.coding import labels_to_classes

    norm = np.stack([brain_normalise(arrays[m]) for m in MODALITIES])
    label = labels_to_classes(arrays["seg"].astype(np.int64)).numpy()
    tumour = np.argwhere(label > 0)
    batches = []
    for _ in range(n):
        images, labels = [], []
        for _ in range(8):
            x, y, z = tumour[rng.integers(len(tumour))]
            x = int(np.clip(x - 64, 0, norm.shape[1] - 128))
            y = int(np.clip(y - 64, 0, norm.shape[2] - 128))
            z = int(np.clip(z, 1, norm.shape[3] - 2))
            images.append(norm[:, x : x + 128, y : y + 128, z - 1 : z + 2].transpose(0, 3, 1, 2).reshape(12, 128, 128))
            labels.append(label[x : x + 128, y : y + 128, z][None])
        batches.append({"image": torch.from_numpy(np.stack(images)), "label": torch.from_numpy(np.stack(labels))})
    return batches


def recipe_speed(config, batches: list[dict[str, torch.Tensor]], precision: str) -> float:
    """Optimiser steps per second of the recipe's network and loss (after 5 warm-up steps)."""
    from meddiffusion.segmentation.models import build_from_weights_config
    from meddiffusion.segmentation.train import make_loss, weights_config

    torch.manual_seed(0)
    model = build_from_weights_config(weights_config(config)).to(DEVICE)
    loss_fn, _ = make_loss(config.loss, config.network.output)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch):
        batch = {k: v.to(DEVICE) for k, v in batch.items()}
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = loss_fn(model, batch, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:5]:
        step(batch)
    _, seconds = timed(lambda: [step(b) for b in batches[5:]])
    return (len(batches) - 5) / seconds


def check_training(arrays, out_dir: Path) -> dict:
    from meddiffusion.segmentation.models import build_from_weights_config
    from meddiffusion.segmentation.train import SegTrainConfig, make_loss, weights_config
    from meddiffusion.training import TrainConfig, train

    config = SegTrainConfig()
    config.data.patch_size = 128
    batches = recipe_batches(arrays, 40, np.random.default_rng(0))
    out = {f"recipe_steps_per_s_{p}": recipe_speed(config, batches, p) for p in ("fp32", "bf16")}

    class Patches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10**6

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            batch = batches[(i // 8) % len(batches)]
            return {k: v[i % 8] for k, v in batch.items()}

    losses = []

    def logged(model, batch, generator):
        loss, terms = loss_fn(model, batch, generator)
        losses.append(float(loss.detach()))
        return loss, terms

    loss_fn, _ = make_loss(config.loss, config.network.output)
    torch.manual_seed(0)
    model = build_from_weights_config(weights_config(config))
    settings = TrainConfig(steps=60, batch_size=8, mixed_precision="bf16", warmup_steps=5, checkpoint_every=30)
    train(model, Patches(), logged, settings, out_dir / "accelerate_run")
    out["accelerate_bf16_loss_first_10"] = float(np.mean(losses[:10]))
    out["accelerate_bf16_loss_last_10"] = float(np.mean(losses[-10:]))
    out["accelerate_bf16_finite"] = bool(np.isfinite(losses).all())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)",
    }
    arrays, affine = read_case(args.case)
    checks = {
        "segmentation": lambda: check_segmentation(arrays, affine),
        "super_resolution": lambda: check_sr(arrays),
        "training": lambda: check_training(arrays, Path(tempfile.mkdtemp())),
    }
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            report[name] = check()
        except Exception as exc:  # one failing check must not hide the others' results
            report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        report[name]["check_seconds"] = time.perf_counter() - started
        print(name, json.dumps(report[name], indent=1), flush=True)
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
