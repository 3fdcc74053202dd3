"""Self-supervised pretraining (issue #17): the DINO parts against hand computations, the three-plane views, and a
short real pretraining run that resumes exactly and initialises a segmenter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from meddiffusion.app.cli import main
from meddiffusion.data.layouts import modality_from_name, read_volumes
from meddiffusion.errors import MeddiffError
from meddiffusion.segmentation.dino import dino_loss, ema_update, teacher_momentum, update_center
from meddiffusion.segmentation.models import build_from_weights_config
from meddiffusion.segmentation.pretrain import load_pretrained_encoder, load_ssl_config, run_pretraining
from meddiffusion.segmentation.train import load_seg_config, run_training, weights_config
from meddiffusion.segmentation.views import plane_patch
from meddiffusion.weights import WEIGHTS_FILE, weights_hash

ROOT = Path(__file__).resolve().parents[1]


def test_dino_loss_equals_a_hand_computation_and_is_least_when_student_and_teacher_agree():
    s = [torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])]
    t = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])]
    center = torch.tensor([0.1, 0.0, -0.1])
    ts, tt = 0.5, 0.25

    def ce(teacher, student):  # -sum_k p_t log p_s, written out
        p = np.exp((teacher - center.numpy()) / tt)
        p /= p.sum()
        log_q = student / ts - np.log(np.exp(student / ts).sum())
        return -(p * log_q).sum()

    pairs = [(i, j) for i in range(2) for j in range(3) if i != j]
    expected = np.mean([ce(t[i][0].numpy(), s[j][0].numpy()) for i, j in pairs])
    assert float(dino_loss(s, t, center, ts, tt)) == pytest.approx(expected, rel=1e-6)
    # with a fixed teacher, the loss is lowest when every student view predicts the teacher's distribution
    teacher = [torch.tensor([[3.0, 0.0, 0.0]])] * 2
    agree = dino_loss([torch.tensor([[6.0, 0.0, 0.0]])] * 3, teacher, torch.zeros(3), 0.5, 0.5)
    for other in ([0.0, 6.0, 0.0], [1.0, 1.0, 1.0], [6.0, 6.0, 0.0]):
        assert float(agree) < float(dino_loss([torch.tensor([other])] * 3, teacher, torch.zeros(3), 0.5, 0.5))


def test_ema_update_is_exact_and_centering_keeps_the_teacher_mean_at_the_center():
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():  # small integers: 0.75 t + 0.25 s is exact in floating point, so equality is exact
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.copy_(torch.randint(-8, 8, t.shape))
            s.copy_(torch.randint(-8, 8, s.shape))
    pairs = zip(teacher.parameters(), student.parameters(), strict=True)
    expected = [0.75 * t.detach() + 0.25 * s.detach() for t, s in pairs]
    ema_update(teacher, student, 0.75)
    assert all(torch.equal(t, e) for t, e in zip(teacher.parameters(), expected, strict=True))
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996) and teacher_momentum(100, 100, 0.996) == 1.0
    # a teacher whose logits have a constant mean m: the center converges to m, and the centred outputs to mean 0
    center = torch.zeros(4)
    logits = [torch.randn(8, 4) + torch.tensor([5.0, -2.0, 0.0, 1.0]) for _ in range(2)]
    for _ in range(200):
        update_center(center, logits, 0.9)
    assert torch.allclose(center, torch.cat(logits).mean(0), atol=1e-4)
    assert torch.allclose((torch.cat(logits) - center).mean(0), torch.zeros(4), atol=1e-4)


def test_the_three_plane_views_of_one_location_come_from_the_same_voxels():
    volume = torch.arange(2 * 10 * 12 * 14, dtype=torch.float32).reshape(2, 10, 12, 14)
    center = (4, 5, 6)
    views = [plane_patch(volume, center, normal, 8, 1) for normal in range(3)]
    assert all(v.shape == (2 * 3, 8, 8) for v in views)
    # the center voxel of each plane (channel block of modality c, middle neighbour) is volume[c, 4, 5, 6]
    for v in views:
        for c in range(2):
            assert v[c * 3 + 1, 4, 4] == volume[c, 4, 5, 6]
    # the axial view's row of the center runs along axis 0 through the same voxels as the coronal view's
    assert torch.equal(views[2][1, :, 4], views[1][1, :, 4])  # both: volume[0, 0:8, 5, 6]
    assert torch.equal(views[2][1, :, 4], volume[0, 0:8, 5, 6])
    # neighbours lie along each view's normal
    assert views[0][0, 4, 4] == volume[0, 3, 5, 6] and views[0][2, 4, 4] == volume[0, 5, 5, 6]


def test_volumes_are_read_with_the_modality_their_name_states(real_crop, tmp_path):
    assert modality_from_name("TCGA-FG-6692_T1_AX_POST_GAD.nii.gz") == "t1ce"
    assert modality_from_name("BRATS_HG0015_T1.mha") == "t1" and modality_from_name("x-t2f.nii.gz") == "flair"
    folder = tmp_path / "vols"
    folder.mkdir()
    (folder / "scan_FLAIR.nii.gz").write_bytes(real_crop["flair"].read_bytes())
    (folder / "scan_seg.nii.gz").write_bytes(real_crop["label"].read_bytes())
    cases = read_volumes([folder])
    assert [(c.case_id, sorted(c.images)) for c in cases] == [("scan_FLAIR", ["flair"])]
    (folder / "mystery.nii.gz").write_bytes(real_crop["t1"].read_bytes())
    with pytest.raises(MeddiffError, match="mystery.nii.gz: its name states no modality"):
        read_volumes([folder])


@pytest.fixture
def tiny_ssl(real_crop, tmp_path):
    data = tmp_path / "cases.csv"
    data.write_text(
        "case_id,flair,t1,t1ce,t2,label,convention\n"
        f"hg,{real_crop['flair']},{real_crop['t1']},{real_crop['t1ce']},{real_crop['t2']},{real_crop['label']},brats2012\n"
    )
    tiny = {
        "data.data": [str(data)],
        "data.probe": str(data),
        "data.global_size": 32,
        "data.local_size": 16,
        "data.n_local": 2,
        "data.probe_patches": 12,
        "network.model": "dualpath",
        "network.channels": [8, 16, 32, 64],
        "network.d_model": 16,
        "network.n_heads": 2,
        "dino.hidden": 32,
        "dino.bottleneck": 16,
        "dino.prototypes": 16,
        "train.steps": 4,
        "train.batch_size": 2,
        "train.warmup_steps": 1,
        "train.log_every": 1,
        "train.checkpoint_every": 2,
        "train.validate_every": 4,
        "train.threads": 1,
    }
    return data, tiny


def test_pretraining_logs_collapse_measures_resumes_exactly_and_initialises_a_segmenter(tiny_ssl, tmp_path):
    data, tiny = tiny_ssl
    straight = run_pretraining(load_ssl_config(None, tiny), tmp_path / "a")
    log = np.genfromtxt(tmp_path / "a" / "training_log.csv", delimiter=",", names=True)
    assert {"teacher_entropy", "prototypes_used", "embedding_std"} <= set(log.dtype.names)
    probe = np.genfromtxt(tmp_path / "a" / "validation_log.csv", delimiter=",", names=True)
    assert 0.0 <= float(probe["knn_accuracy_teacher"]) <= 1.0
    run_pretraining(load_ssl_config(None, tiny), tmp_path / "b", stop_at=2)
    resumed = run_pretraining(load_ssl_config(None, tiny), tmp_path / "b", resume=True)
    a, b = load_file(straight / WEIGHTS_FILE), load_file(resumed / WEIGHTS_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)  # teacher included: exact resume
    assert json.loads((straight / "config.json").read_text())["task"] == "ssl"

    seg_overrides = {
        "data.data": str(data),
        "data.patch_size": 32,
        "network.model": "dualpath",
        "network.channels": [8, 16, 32, 64],
        "network.d_model": 16,
        "network.n_heads": 2,
        "train.steps": 1,
        "train.batch_size": 2,
        "train.threads": 1,
    }
    config = load_seg_config(None, {**seg_overrides, "init": str(straight)})
    model = build_from_weights_config(weights_config(config))
    assert load_pretrained_encoder(model, straight, weights_config(config)) > 20
    state = model.state_dict()  # the encoder tensors land in the segmenter unchanged; the decoder is not touched
    assert all(torch.equal(state[k], a[k]) for k in a if k.startswith(("stem.", "encoder.", "attention.")))
    assert run_training(config, tmp_path / "seg").is_dir()
    # a segmenter of another shape is a one-line error naming the difference
    other = load_seg_config(None, {**seg_overrides, "network.d_model": 32, "network.n_heads": 4})
    with pytest.raises(MeddiffError, match="does not fit this segmenter .*d_model"):
        load_pretrained_encoder(build_from_weights_config(weights_config(other)), straight, weights_config(other))
    assert (
        main(["seg", "train", "--data", str(data), "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
        == 2
    )


def test_the_monai_unet_encoder_pretrains_and_initialises_a_unet_segmenter(tiny_ssl, tmp_path):
    """The U-Net's down path and bottom are its encoder: pretraining learns exactly those tensors and ``--init``
    puts them into a U-Net segmenter, leaving its decoder as built; a dual-path segmenter is refused."""
    from meddiffusion.segmentation.models import encoder_keys

    data, tiny = tiny_ssl
    unet = {**tiny, "network.model": "unet", "train.steps": 2, "train.validate_every": 2}
    weights = run_pretraining(load_ssl_config(None, unet), tmp_path / "u")
    learned = load_file(weights / WEIGHTS_FILE)
    seg = {"data.data": str(data), "data.patch_size": 32, "network.channels": [8, 16, 32, 64], "train.threads": 1}
    config = load_seg_config(None, {**seg, "network.model": "unet"})
    model = build_from_weights_config(weights_config(config))
    built = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = encoder_keys(model)
    assert 0 < len(encoder) < len(built) and all(k.startswith("model.") for k in encoder)
    assert load_pretrained_encoder(model, weights, weights_config(config)) == len(encoder)
    state = model.state_dict()
    assert all(torch.equal(state[k], learned[k]) for k in encoder)
    assert all(torch.equal(state[k], built[k]) for k in built if k not in encoder)  # decoder untouched
    assert not all(torch.equal(built[k], learned[k]) for k in encoder)  # something was loaded
    dual = load_seg_config(None, {**seg, "network.model": "dualpath"})
    with pytest.raises(MeddiffError, match="does not fit this segmenter .*model"):
        load_pretrained_encoder(build_from_weights_config(weights_config(dual)), weights, weights_config(dual))


def test_the_shipped_encoder_fits_the_proposal_recipe_and_is_named_by_init(tmp_path):
    """``ssl-dualpath`` (shipped, with provenance; deformable attention) loads into the segmenter of the proposal's
    recipe and is refused by the default's (windowed attention) with the difference named; ``--init ssl-dualpath``
    names it; its config records training data relative to the folder."""
    from meddiffusion.paths import PRETRAINED, weights_folder

    folder = weights_folder("ssl-dualpath")
    assert folder == PRETRAINED / "ssl-dualpath" and weights_folder(tmp_path) == tmp_path
    with pytest.raises(MeddiffError, match="shipped: seg-dualpath, seg-unet, sr-diffusion"):
        weights_folder("ssl-dualpth")  # a typo of a shipped name is named, with the shipped ones
    default = weights_config(load_seg_config(ROOT / "configs" / "seg_dualpath.yaml"))
    with pytest.raises(MeddiffError, match="attention: 'deformable' vs 'window'"):
        load_pretrained_encoder(build_from_weights_config(default), folder, default)
    config = load_seg_config(ROOT / "configs" / "seg_dualpath_proposal.yaml")
    model = build_from_weights_config(weights_config(config))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_pretrained_encoder(model, folder, weights_config(config)) > 50
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and not [k for k in changed if k.startswith(("up.", "decoder.", "head."))]
    record = json.loads((folder / "config.json").read_text())["training"]["config"]["data"]
    assert record["probe"] == "../../../configs/seg_cases.csv"
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["code"]["commit"] and provenance["weights_sha256"] == weights_hash(folder)
