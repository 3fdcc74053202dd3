"""Dual-path network and hybrid loss terms against hand-computed cases (issue #8, in progress)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meddiffusion.segmentation.deformable import DeformableAttention, reference_points
from meddiffusion.segmentation.dualpath import DualPathSegNet
from meddiffusion.segmentation.losses import (
    HybridLoss,
    boundary_gradient_loss,
    distance_boundary_loss,
    topology_loss,
)

pytest.importorskip("cripser", reason="the topology term needs cripser (a dependency)")


@pytest.mark.parametrize("dims", [2, 3])
def test_deformable_attention_with_zero_offsets_is_bilinear_sampling_at_the_reference(dims):
    torch.manual_seed(0)
    attn = DeformableAttention(dim=8, spatial_dims=dims, n_heads=2, n_levels=1, n_points=3)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
        for proj in (attn.value_proj, attn.output_proj):
            proj.weight.copy_(torch.eye(8))
            proj.bias.zero_()
    spatial = (6, 7) if dims == 2 else (4, 5, 6)
    value = torch.randn(1, 8, *spatial)
    ref = torch.rand(1, 5, dims) * 0.8 + 0.1
    query = torch.randn(1, 5, 8)
    out = attn(query, ref, [value])
    grid = (2 * ref - 1).view(1, 5, 1, dims) if dims == 2 else (2 * ref - 1).view(1, 5, 1, 1, dims)
    expected = F.grid_sample(value, grid, mode="bilinear", align_corners=False).reshape(1, 8, 5).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-5)


def test_reference_points_are_voxel_centers_in_grid_sample_order():
    ref = reference_points((2, 4))
    assert ref.shape == (8, 2)
    assert torch.allclose(ref[1], torch.tensor([0.375, 0.25]))  # (x along the last axis, y along the first)


@pytest.mark.parametrize(("dims", "shape"), [(2, (2, 3, 32, 40)), (3, (1, 2, 16, 16, 24))])
@pytest.mark.parametrize("variant", [{}, {"attention": "window"}, {"use_transformer": False}, {"use_cnn": False}])
def test_dual_path_forward_keeps_the_spatial_shape_and_every_branch_learns(dims, shape, variant):
    torch.manual_seed(0)
    net = DualPathSegNet(dims, shape[1], 4, channels=(8, 16, 16, 32), d_model=16, **variant)
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], 4, *shape[2:])
    # every parameter of the variant's branches receives gradient (a branch cut off from the output would not);
    # weights drawn at random first, as Deformable DETR's zero-initialised offsets hide the query path at init
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    out = net(torch.randn(shape))
    out.square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    assert (net.encoder is None) == (variant.get("use_cnn") is False)
    assert hasattr(net, "attention") == (variant.get("use_transformer") is not False)


def test_boundary_gradient_loss_hand_computed():
    label = torch.zeros(1, 1, 1, 4)
    label[..., 2:] = 1  # a step between voxels 1 and 2: gradient 1 at voxel 1
    assert boundary_gradient_loss(label, label) == pytest.approx(0.0, abs=1e-5)
    flat = torch.full_like(label, 0.5)
    # |grad y - grad y_hat| is 1 at one of 4 voxels; the row axis contributes 0
    assert boundary_gradient_loss(flat, label) == pytest.approx(0.25, abs=1e-5)


def test_distance_boundary_loss_prefers_predictions_inside_the_label():
    label = torch.zeros(1, 1, 9, 9)
    label[..., 3:6, 3:6] = 1
    inside, outside = label.clone(), torch.zeros_like(label)
    outside[..., 0, 0] = 1
    assert distance_boundary_loss(inside, label) < 0 < distance_boundary_loss(outside, label)


def test_topology_loss_zero_for_identical_and_larger_for_spurious_component_or_hole():
    label = torch.zeros(1, 16, 16)
    label[0, 4:12, 4:12] = 1
    assert topology_loss(label, label) == pytest.approx(0.0, abs=1e-6)
    spurious = label.clone()
    spurious[0, 14, 1] = 0.9
    holed = label.clone()
    holed[0, 7:9, 7:9] = 0.0
    soft = label * 0.9 + 0.05  # same topology, different values
    t_soft, t_spur, t_hole = (float(topology_loss(p, label)) for p in (soft, spurious, holed))
    assert t_spur > t_soft and t_hole > t_soft
    assert t_hole == pytest.approx(0.5)  # one unmatched 1-cycle of persistence 1: (1 - 0)^2 / 2


def test_topology_gradient_is_non_zero_on_the_critical_cells():
    label = torch.zeros(1, 12, 12)
    label[0, 3:9, 3:9] = 1
    pred = label.clone() * 0.8 + 0.1
    pred[0, 10, 10] = 0.7  # a spurious component born at this voxel
    pred.requires_grad_(True)
    topology_loss(pred, label, weights=(1.0, 0.0)).backward()
    grad = pred.grad[0]
    assert grad[10, 10] != 0  # its birth cell
    assert torch.count_nonzero(grad) <= 6  # only critical cells carry gradient


def test_hybrid_loss_combines_terms_and_decreases_when_fitting_a_real_label(real_crop):
    import nibabel as nib

    label = torch.from_numpy(np.asarray(nib.load(real_crop["label"]).dataobj)[:, :, 16].astype(np.int64))
    target = label[None, None].clamp(max=2)
    logits = torch.zeros(1, 3, 64, 64, requires_grad=True)
    loss_fn = HybridLoss(alpha=1.0, beta=0.5, gamma=0.01, topology_downsample=2)
    assert set(loss_fn.terms(logits, target)) == {"dice", "boundary", "topology"}
    opt = torch.optim.Adam([logits], lr=0.5)
    first = loss_fn(logits, target).item()
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
    assert loss_fn(logits, target).item() < 0.5 * first


@pytest.mark.parametrize("boundary", ["gradient", "distance"])
def test_an_undelineated_enhancing_core_is_tumour_and_core_and_no_term_learns_its_et(boundary):
    """BRATS 2012 marks the whole core as one class: ET inside it is unknown. Whatever the ET channel predicts
    there, every term is the same (and its gradient zero); read as BraTS 2021 (core known to lack ET), not."""
    from monai.losses import DiceLoss

    from meddiffusion.segmentation.coding import CORE_ET_UNKNOWN, classes_to_regions, labels_to_classes

    labels = np.zeros((1, 1, 24, 24), dtype=np.int64)
    labels[..., 4:20, 4:20] = 2  # oedema
    labels[..., 8:16, 8:16] = 1  # the core
    unknown, known = labels_to_classes(labels, ("ET",)), labels_to_classes(labels)
    assert int((unknown == CORE_ET_UNKNOWN).sum()) == 64 and not (known == CORE_ET_UNKNOWN).any()
    assert torch.equal(classes_to_regions(unknown)[:, :2], classes_to_regions(known)[:, :2])
    loss_fn = HybridLoss(alpha=1.0, beta=0.5, gamma=0.01, boundary=boundary, ce=1.0, output="regions")
    torch.manual_seed(0)
    low = torch.randn(1, 3, 24, 24)
    high = low.clone()
    high[:, 2, 8:16, 8:16] += 5.0  # the ET channel says "enhancing" all over the core
    for a, b in zip(loss_fn.terms(low, unknown).values(), loss_fn.terms(high, unknown).values(), strict=True):
        assert a.item() == pytest.approx(b.item(), abs=1e-6)
    assert loss_fn(high, known) > loss_fn(low, known) + 0.1  # a core known to lack ET penalises it
    logits = low.clone().requires_grad_()
    loss_fn(logits, unknown).backward()
    assert torch.count_nonzero(logits.grad[:, 2, 8:16, 8:16]) == 0 and torch.count_nonzero(logits.grad[:, 2]) > 0
    monai = DiceLoss(sigmoid=True, batch=True)(low, classes_to_regions(known))  # nothing unknown: MONAI's Dice
    assert loss_fn.terms(low, known)["dice"].item() == pytest.approx(monai.item(), rel=1e-6)
    softmax = HybridLoss(alpha=1.0, beta=0.0, gamma=0.0, output="classes")
    four = torch.randn(1, 4, 24, 24)
    assert softmax(four, unknown).item() == pytest.approx(softmax(four, known).item())  # read as core (1)


def _gradnorm_weights(steps: int, **kwargs) -> dict[str, float]:
    from meddiffusion.segmentation.reweighting import GradNorm

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    reweight = GradNorm(["strong", "weak"], alpha=0.0, lr=0.05, **kwargs)
    x = torch.randn(16, 4)
    for _ in range(steps):
        out = layer(x)
        losses = {"strong": 10.0 * out.pow(2).mean(), "weak": 0.1 * out.pow(2).mean()}
        total = reweight(losses, list(layer.parameters()))
        assert total.requires_grad
    return reweight.as_dict()


def test_gradnorm_lifts_the_term_with_the_weaker_gradient_and_keeps_the_sum():
    weights = _gradnorm_weights(30, bounds=(0.01, 100.0))
    assert weights["weak"] > weights["strong"]
    assert sum(weights.values()) == pytest.approx(2.0)


def test_gradnorm_keeps_every_weight_within_its_bounds():
    """Unbounded, the strong term's weight falls towards 0 (a starved Dice term); bounded, it stops at 0.5."""
    assert _gradnorm_weights(200, bounds=(0.01, 100.0))["strong"] < 0.1
    weights = _gradnorm_weights(200)
    assert all(0.5 <= w <= 2.0 for w in weights.values())
    assert weights["strong"] == pytest.approx(0.5) and weights["weak"] > 1.4
