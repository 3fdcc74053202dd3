"""The hybrid loss L = alpha * Dice + ce * cross-entropy + beta * Boundary + gamma * Topology.

- Dice: MONAI's ``DiceLoss`` (batch Dice; sigmoid over the WT / TC / ET regions, or softmax over classes).
- Boundary, as the proposal defines it: the mean over voxels of ||grad y - grad y_hat||_2 between the one-hot
  label and the soft prediction (finite differences); or, as the alternative, Kervadec et al.'s
  distance-transform boundary loss, mean(y_hat * signed distance to the label's boundary).
- Topology: sum over homology dimensions k of lambda_k * W(P_k(Y), P_k(Y_hat)), the squared 2-Wasserstein
  distance between the persistence diagrams of the cubical complexes of label and foreground probability
  (cripser computes the diagrams and their critical cells; squared, so it stays smooth where the diagrams
  agree). It is differentiable through the prediction's values at the critical cells.

The boundary-gradient and topology terms are written here: MONAI has neither, and no maintained library offers
a differentiable persistence-diagram loss for PyTorch on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from torch import nn

from meddiffusion.segmentation.coding import (
    CORE_ET_UNKNOWN,
    activate,
    check_coding,
    classes_to_regions,
    foreground,
    region_known,
)


def spatial_gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences along every spatial axis of ``[B, C, *S]``, stacked: ``[B, C, D, *S]`` (zero at the end)."""
    grads = []
    for axis in range(2, x.ndim):
        diff = torch.diff(x, dim=axis)
        pad = [0, 0] * (x.ndim - 1 - axis) + [0, 1]
        grads.append(F.pad(diff, pad))
    return torch.stack(grads, dim=2)


def boundary_gradient_loss(prob: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Mean over batch, classes and voxels of ||grad y - grad y_hat||_2 (the proposal's boundary term)."""
    diff = spatial_gradient(onehot.to(prob.dtype)) - spatial_gradient(prob)
    return torch.sqrt((diff**2).sum(dim=2) + 1e-12).mean()


def signed_distance(onehot: np.ndarray) -> np.ndarray:
    """Signed distance to each class's boundary (negative inside), per batch item and class."""
    out = np.zeros(onehot.shape, dtype=np.float32)
    for b in range(onehot.shape[0]):
        for c in range(onehot.shape[1]):
            mask = onehot[b, c] > 0.5
            if mask.any() and not mask.all():
                out[b, c] = ndimage.distance_transform_edt(~mask) - (ndimage.distance_transform_edt(mask) - 1) * mask
    return out


def distance_boundary_loss(prob: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Kervadec et al. (MIDL 2019): mean of y_hat times the label's signed distance map."""
    dist = torch.from_numpy(signed_distance(onehot.detach().cpu().numpy())).to(prob)
    return (prob * dist).mean()


def _diagram(values: np.ndarray, maxdim: int) -> np.ndarray:
    """Persistence pairs of the sublevel filtration of ``values``: rows (dim, birth, death, birth cell, death cell)."""
    import cripser  # noqa: PLC0415 - optional heavy import, only for the topology term

    return cripser.computePH(values.astype(np.float64), maxdim=maxdim)


def _points(pairs: np.ndarray, dim: int, ndim: int, field: torch.Tensor | None) -> torch.Tensor:
    """(birth, death) of dimension ``dim``; from ``field`` at the critical cells when given (differentiable).

    Essential classes (infinite death) die at the filtration's maximum, 1.
    """
    rows = pairs[pairs[:, 0] == dim]
    if field is None:
        pts = rows[:, 1:3].copy()
        pts[~np.isfinite(pts[:, 1]) | (pts[:, 1] > 1), 1] = 1.0
        return torch.as_tensor(pts, dtype=torch.float32)
    birth_idx = rows[:, 3 : 3 + ndim].astype(np.int64)
    death_idx = rows[:, 6 : 6 + ndim].astype(np.int64)
    births = field[tuple(torch.as_tensor(birth_idx.T))] if len(rows) else field.new_zeros(0)
    deaths = field[tuple(torch.as_tensor(np.clip(death_idx, 0, None).T))] if len(rows) else field.new_zeros(0)
    essential = torch.as_tensor(~np.isfinite(rows[:, 2]) | (rows[:, 2] > 1))
    deaths = torch.where(essential, torch.ones_like(deaths), deaths)
    return torch.stack([births, deaths], dim=1) if len(rows) else field.new_zeros((0, 2))


def wasserstein2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distance between two diagrams ([n, 2] and [m, 2]), points matchable to the diagonal.

    Hungarian matching (scipy) on the detached costs; the value is summed from the tensors, so gradients flow
    into whichever diagram carries them.
    """
    n, m = len(a), len(b)
    diag_a = ((a[:, 1] - a[:, 0]) ** 2) / 2
    diag_b = ((b[:, 1] - b[:, 0]) ** 2) / 2
    cost = a.new_zeros((n + m, n + m))
    if n and m:
        cost[:n, :m] = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    cost[:n, m:] = diag_a[:, None].expand(n, n) if n else cost[:n, m:]
    cost[n:, :m] = diag_b[None, :].expand(m, m) if m else cost[n:, :m]
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return cost[torch.as_tensor(rows), torch.as_tensor(cols)].sum()


def topology_loss(prob: torch.Tensor, label: torch.Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Sum over the batch and homology dimensions k of lambda_k * W2^2(P_k(label), P_k(prob)).

    ``prob`` and ``label``: foreground probability and binary label, ``[B, *S]`` (2D or 3D). The filtration
    is 1 - value (the foreground is born first), so components, holes and cavities of the foreground are
    compared. Dimensions beyond the data's (k = 2 in 2D) are skipped.
    """
    ndim = prob.ndim - 1
    dims = [k for k in range(min(len(weights), ndim)) if weights[k]]
    total = prob.new_zeros(())
    for b in range(prob.shape[0]):
        field = 1.0 - prob[b]
        pred_pairs = _diagram(field.detach().cpu().numpy(), max(dims))
        label_pairs = _diagram(1.0 - label[b].detach().cpu().numpy().astype(np.float64), max(dims))
        for k in dims:
            p = _points(pred_pairs, k, ndim, field)
            q = _points(label_pairs, k, ndim, None).to(prob)
            total = total + weights[k] * wasserstein2(p, q)
    return total / prob.shape[0]


class HybridLoss(nn.Module):
    """``alpha * Dice + ce * cross-entropy + beta * Boundary + gamma * Topology`` on logits ``[B, K, *S]`` and
    class-index labels ``[B, 1, *S]``.

    ``output`` is the network's coding (``segmentation.coding``): ``regions`` (sigmoid WT / TC / ET, binary
    cross-entropy) or ``classes`` (softmax, cross-entropy). Dice is the batch Dice (nnU-Net's: summed over the
    batch, so patches without tumour do not make it undefined). Cross-entropy is nnU-Net's partner of Dice;
    the proposal's loss is the case ``ce = 0``. ``forward`` returns the weighted total; ``terms`` the unweighted
    terms (for logging and reweighting). The topology term uses the whole-tumour probability, optionally on a
    ``topology_downsample``-times average-pooled map to bound its cost. A region whose target a voxel's label
    leaves unknown (``coding.CORE_ET_UNKNOWN``) counts there as predicted exactly, so no term learns from it;
    the softmax coding cannot leave one region out and reads such a voxel as core (1).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.5,
        gamma: float = 0.01,
        boundary: str = "gradient",
        topology_weights: Sequence[float] = (1.0, 1.0, 1.0),
        topology_downsample: int = 1,
        ce: float = 0.0,
        output: str = "classes",
    ) -> None:
        super().__init__()
        if boundary not in ("gradient", "distance"):
            raise ValueError("boundary must be 'gradient' or 'distance'")
        self.weights = {"dice": alpha, "ce": ce, "boundary": beta, "topology": gamma}
        self.boundary = boundary
        self.topology_weights = tuple(topology_weights)
        self.topology_downsample = topology_downsample
        self.output = check_coding(output)
        regions = output == "regions"
        # regions: Dice of probabilities in which unknown targets are replaced by themselves (sigmoid applied here)
        self.dice = DiceLoss(softmax=not regions, to_onehot_y=not regions, batch=True)

    def terms(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        prob = activate(logits, self.output)
        if self.output == "regions":
            target, known = classes_to_regions(label), region_known(label)
            prob = torch.where(known, prob, target)
            out = {"dice": self.dice(prob, target)}
        else:
            label = torch.where(label == CORE_ET_UNKNOWN, 1, label)
            target = F.one_hot(label[:, 0].long(), logits.shape[1]).movedim(-1, 1).to(prob)
            out = {"dice": self.dice(logits, label)}
        if self.weights["ce"]:
            if self.output == "regions":
                bce = F.binary_cross_entropy_with_logits(logits, target, weight=known.to(logits), reduction="sum")
                out["ce"] = bce / known.sum().clamp(min=1)
            else:
                out["ce"] = F.cross_entropy(logits, label[:, 0].long())
        if self.weights["boundary"]:
            fn = boundary_gradient_loss if self.boundary == "gradient" else distance_boundary_loss
            out["boundary"] = fn(prob, target)
        if self.weights["topology"]:
            fg, lab = foreground(prob, self.output)[:, None], (label > 0).to(prob)
            if self.topology_downsample > 1:
                pool = F.avg_pool2d if logits.ndim == 4 else F.avg_pool3d
                fg, lab = pool(fg, self.topology_downsample), (pool(lab, self.topology_downsample) > 0.5).to(prob)
            out["topology"] = topology_loss(fg[:, 0], lab[:, 0], self.topology_weights)
        return out

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in self.terms(logits, label).items())
