"""The diffusion core and the Accelerate loop on real slices: loss goes down, checkpoints resume exactly."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from meddiffusion.diffusion import ConditionalUNet, NetworkConfig, make_scheduler
from meddiffusion.diffusion.schedule import ScheduleConfig
from meddiffusion.errors import MeddiffError
from meddiffusion.sr.data import SRPairs
from meddiffusion.sr.inference import network_volumes
from meddiffusion.sr.planes import Task
from meddiffusion.sr.train import diffusion_loss, regression_loss
from meddiffusion.training import TrainConfig, read_log, train
from meddiffusion.weights import record_run, save_weights


@pytest.fixture(scope="module")
def pairs(real_crop):
    return SRPairs(
        [real_crop["t2"], real_crop["flair"]], [Task(2, "inplane"), Task(4, "inplane")], patch_size=32, seed=0
    )


def _small_model(diffusion=True):
    torch.manual_seed(0)
    return ConditionalUNet(NetworkConfig(block_out_channels=[16, 16], norm_num_groups=8, diffusion=diffusion))


def _eval_loss(model, pairs, loss_fn, n=48):
    batch = {k: torch.stack([pairs[10_000 + i][k] for i in range(n)]) for k in ("cond", "target", "conditions")}
    with torch.no_grad():
        return float(loss_fn(model.eval(), batch, torch.Generator().manual_seed(0)))


def test_a_few_training_steps_on_real_slices_lower_the_loss(pairs, tmp_path):
    model = _small_model(diffusion=False)
    before = _eval_loss(model, pairs, regression_loss)
    config = TrainConfig(steps=40, batch_size=8, learning_rate=2e-3, warmup_steps=0, checkpoint_every=40, ema_decay=0.0)
    trained = train(model, pairs, regression_loss, config, tmp_path / "run", seed=0)
    after = _eval_loss(trained, pairs, regression_loss)
    assert after < 0.9 * before
    assert (tmp_path / "run" / "training_log.csv").read_text().startswith("step,loss")


def test_diffusion_objective_trains(pairs, tmp_path):
    scheduler = make_scheduler("ddpm")
    loss_fn = diffusion_loss(scheduler)
    model = _small_model()
    before = _eval_loss(model, pairs, loss_fn)
    config = TrainConfig(steps=40, batch_size=8, learning_rate=2e-3, warmup_steps=0, checkpoint_every=40, ema_decay=0.0)
    after = _eval_loss(train(model, pairs, loss_fn, config, tmp_path / "run", seed=0), pairs, loss_fn)
    assert after < before


@pytest.mark.parametrize("diffusion", [False, True])
def test_resume_restores_optimizer_and_continues_identically(pairs, tmp_path, diffusion):
    """Also for the diffusion objective, whose noise and timesteps come from the loop's generator: a resumed run
    draws the same noise at each step as an uninterrupted one (it drew different noise before)."""
    loss_fn = diffusion_loss(make_scheduler("ddpm")) if diffusion else regression_loss
    config = TrainConfig(steps=6, batch_size=4, learning_rate=1e-3, warmup_steps=0, checkpoint_every=3, ema_decay=0.9)
    straight = train(_small_model(diffusion), pairs, loss_fn, config, tmp_path / "a", seed=1)

    # stop after 3 steps, as if the process died right after the checkpoint at step 3
    train(_small_model(diffusion), pairs, loss_fn, config, tmp_path / "b", seed=1, stop_at=3)
    ckpt = tmp_path / "b" / "checkpoint"
    saved = json.loads((ckpt / "trainer_state.json").read_text())
    assert saved["step"] == 3 and saved["elapsed_s"] > 0
    state = torch.load(ckpt / "optimizer.bin", weights_only=False)
    assert state["state"] and all(int(s["step"]) == 3 for s in state["state"].values())
    with pytest.raises(MeddiffError, match="--resume"):
        train(_small_model(diffusion), pairs, loss_fn, config, tmp_path / "b", seed=1)
    (ckpt / "trainer_state.json").write_text(json.dumps({**saved, "elapsed_s": 1000.0}))  # a long first session
    resumed = train(_small_model(diffusion), pairs, loss_fn, config, tmp_path / "b", seed=1, resume=True)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    # the wall time goes on from the checkpoint's: the log reports the run's training time, not the last session's
    with open(tmp_path / "b" / "training_log.csv") as handle:
        logged = [float(row["elapsed_s"]) for row in csv.DictReader(handle)]
    assert 1000.0 <= logged[-1] < 1000.0 + 120
    # the weights' provenance names both invocations, each with the step it started from and its code state
    folder = save_weights(tmp_path / "weights", resumed, {"task": "toy", "network": {}})
    record_run(folder, 1, tmp_path / "b")
    segments = json.loads((folder / "provenance.json").read_text())["segments"]
    assert [s["from_step"] for s in segments] == [0, 3] and all("commit" in s["code"] for s in segments)


class _NoiseResiduals(torch.utils.data.Dataset):
    """A toy residual-diffusion set: conditioning images, and residuals that are pure zero-mean noise (what is left
    over an optimal regression): the trained model's mean of samples must then be the regression output itself."""

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        return {
            "cond": torch.rand(4, 16, 16, generator=g) * 2 - 1,
            "target": torch.randn(1, 16, 16, generator=g),
            "conditions": torch.tensor([1.0, 0.0]),
        }


@pytest.mark.parametrize("resumed_clock", ["from the checkpoint", "from zero"])
def test_a_resumed_log_keeps_the_last_row_of_a_step_and_counts_the_discarded_work(tmp_path, resumed_clock):
    """Stopped after step 100 (20 s), resumed from the checkpoint of step 50 (10 s): the 10 s past it were run and
    thrown away, and steps 75 and 100 are logged twice; a clock that restarted at 0 (older runs) says the same."""
    offset = 10.0 if resumed_clock == "from the checkpoint" else 0.0
    rows = [(25, 5.0), (50, 10.0), (75, 15.0), (100, 20.0)] + [(s, offset + e) for s, e in ((75, 5.5), (100, 10.5))]
    path = tmp_path / "training_log.csv"
    path.write_text("step,loss,elapsed_s\n" + "".join(f"{s},{s / 1000},{e}\n" for s, e in rows))
    by_step, wall = read_log(path)
    assert list(by_step) == [25, 50, 75, 100] and by_step[75]["elapsed_s"] == offset + 5.5
    assert wall == pytest.approx(20.0 + 10.5)


def test_the_mean_of_residual_samples_of_a_trained_toy_model_approaches_the_regression_output(tmp_path):
    """Residual diffusion cannot fall below its regression mean: trained by the package's loop on residuals that
    are pure zero-mean noise, its whole-volume samples (regression prediction + sampled residual, as ``sr upscale``
    makes them) vary like that noise, while their mean goes to the regression's prediction as 1 / sqrt(samples).
    A model biased by half the noise's spread fails the same check."""
    torch.manual_seed(0)
    model = ConditionalUNet(NetworkConfig(block_out_channels=[16, 16], norm_num_groups=8, cond_channels=4))
    config = TrainConfig(
        steps=150, batch_size=16, learning_rate=2e-3, warmup_steps=0, checkpoint_every=150, ema_decay=0.0
    )
    trained = train(model, _NoiseResiduals(), diffusion_loss(make_scheduler("ddpm")), config, tmp_path / "run", seed=0)
    rng = np.random.default_rng(0)
    low, prior = rng.random((8, 8, 4), np.float32), rng.random((16, 16, 4), np.float32)
    weights = {"neighbours": 1, "residual_scale": 10.0, "schedule": dataclasses.asdict(ScheduleConfig())}
    n = 32

    def residuals() -> np.ndarray:  # in the training target's units: (sample - regression) * residual_scale
        volumes = network_volumes(
            trained.eval(), weights, low, Task(2, "inplane"), 2, [2], priors={2: prior}, samples=n, steps=4
        )
        return (np.stack(volumes) - prior) * weights["residual_scale"]

    def near_regression(res: np.ndarray) -> bool:
        return abs(res.mean()) < 0.1 and np.sqrt((res.mean(0) ** 2).mean()) < 1.5 / np.sqrt(n)

    res = residuals()
    assert 0.5 < res.std(0).mean() < 1.5  # single samples vary like the true residual (what the std map shows)
    assert near_regression(res)
    with torch.no_grad():
        trained.unet.conv_out.bias += 0.5
    assert not near_regression(residuals())


def test_a_resumed_residual_run_reads_the_regression_predictions_back_from_its_cache(real_crop, tmp_path, monkeypatch):
    """Residual diffusion's training pairs need the regression's prediction of the planes they draw from: cached by
    weights, task, plane family, planes and input, a second data set reads them back and draws the same items;
    other weights are another key."""
    regression = _small_model(diffusion=False)
    weights = {"neighbours": 1, "residual_scale": 10.0, "schedule": dataclasses.asdict(ScheduleConfig())}
    tasks = [Task(2, "inplane"), Task(4, "through")]

    def pairs(model):
        return SRPairs(
            [real_crop["t1ce"]],
            tasks,
            patch_size=32,
            seed=0,
            prior=(model, weights),
            prior_cache=tmp_path,
            prior_planes=4,
        )

    first = pairs(regression)
    assert len(list(tmp_path.glob("*.npy"))) == 3 and not list(tmp_path.glob(".*"))  # in-plane 1 family, through 2

    def no_model(*args, **kwargs):
        raise AssertionError("the cached prediction was computed again")

    monkeypatch.setattr("meddiffusion.sr.data.predict_planes", no_model)
    again = pairs(regression)
    for i in (0, 7, 123):
        assert all(torch.equal(first[i][k], again[i][k]) for k in ("cond", "target", "conditions"))
    other = _small_model(diffusion=False)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(AssertionError, match="computed again"):
        pairs(other)


@pytest.mark.parametrize("task", [Task(2, "inplane"), Task(4, "through")], ids=["inplane", "through"])
def test_residual_pairs_predict_a_few_planes_exactly_and_draw_patches_from_them_alone(real_crop, task):
    """The regression's prediction of a few planes per family is the same as of every plane (a plane depends on its
    own and its neighbours' planes only), so training sees what inference computes at a fraction of the cost;
    patches come from those planes alone (a plane without a prediction would condition on zeros)."""
    regression = _small_model(diffusion=False)
    weights = {"neighbours": 1, "residual_scale": 10.0, "schedule": dataclasses.asdict(ScheduleConfig())}

    def pairs(planes):
        return SRPairs([real_crop["t1ce"]], [task], patch_size=32, prior=(regression, weights), prior_planes=planes)

    few, every = pairs(3), pairs(None)
    for a, b in zip(few.entries, every.entries, strict=True):
        chosen = torch.nonzero(a["sampler"].mask.flatten(1).any(1))[:, 0]
        assert len(chosen) == 3 and set(a["sampler"].foreground_planes) == set(chosen.tolist())
        assert torch.allclose(a["prior"][chosen].float(), b["prior"][chosen].float(), atol=2e-3)
        others = torch.ones(len(a["prior"]), dtype=torch.bool)
        others[chosen] = False
        assert not a["prior"][others].any() and b["prior"][others].abs().sum() > 0
    for i in range(40):
        item = few[i]
        assert (item["cond"][-1] > -1).any()  # the prior channel (normalised to [-1, 1]) holds a prediction


def test_inplane_only_volumes_serve_the_inplane_tasks_alone_cut_to_the_head(real_crop):
    """A volume blurred along z trains the in-plane tasks only; every volume is cut to its head's box and stored
    in half precision, and items are full-precision patches of the requested size."""
    import numpy as np

    from meddiffusion.io import load_image
    from meddiffusion.sr.data import head_box

    tasks = [Task(2, "inplane"), Task(2, "through")]
    both = SRPairs([real_crop["t2"]], tasks, patch_size=32, seed=0)
    only = SRPairs([], tasks, patch_size=32, seed=0, inplane_only=[real_crop["t2"]])
    assert {e["task"].axis for e in both.entries} == {"inplane", "through"}
    assert {e["task"].axis for e in only.entries} == {"inplane"}
    assert all(e["high"].dtype == torch.float16 for e in only.entries)
    item = only[0]
    assert item["cond"].dtype == torch.float32 and item["cond"].shape == (3, 32, 32)
    volume = np.zeros((40, 50, 30), np.float32)
    volume[10:20, 5:45, 12:14] = 1.0
    assert head_box(volume, margin=2).shape == (14, 44, 6)
    image = load_image(real_crop["t2"]).data[0].numpy()
    cut = head_box(image)
    assert cut.sum() == image.sum() and cut.size <= image.size  # nothing of the head is lost
