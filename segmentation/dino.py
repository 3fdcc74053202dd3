"""Self-distillation with no labels (DINO; Caron et al. 2021, as DINOv2 trains it) for the segmentation encoder.

A student and a teacher share the architecture: the segmenter's encoder (dual path, or the MONAI U-Net's down path),
global average pooling of its coarsest features, and a projection head ending in ``K`` learned prototypes (weight-
normalised, so the softmax over them is an online clustering of the embeddings). The teacher is not trained: it
follows the student as an exponential moving average. The student learns to predict, from every view, the teacher's
sharpened and centred distribution over prototypes on the *other* global views; centring (subtracting a running mean
of the teacher's outputs) and sharpening (a low teacher temperature) together keep the clustering from collapsing.

Written here with torch: ``lightly`` and the reference code need torchvision, which does not import beside the
CPU torch build; these few parts are small and each is tested against a hand computation.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from meddiffusion.segmentation.models import deepest_features


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear layer onto ``n_prototypes`` (no bias)."""

    def __init__(self, in_dim: int, hidden: int = 256, bottleneck: int = 64, n_prototypes: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, n_prototypes, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


class DINOModel(nn.Module):
    """A segmentation network with a DINO head: ``embed`` gives the pooled features of its encoder, ``forward``
    the prototype logits. Its ``backbone`` is the segmenter's network, so the encoder transfers by name."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return deepest_features(self.backbone, x).flatten(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def dino_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor, t_student: float, t_teacher: float
) -> torch.Tensor:
    """Mean over pairs (teacher view i, student view j), j != i, of the cross-entropy
    ``-sum_k softmax((t_i - center) / t_teacher)_k * log_softmax(s_j / t_student)_k``, averaged over the batch.

    ``teacher``: logits of the global views; ``student``: logits of the same global views first (in the same
    order), then of the local views. The teacher side carries no gradient.
    """
    targets = [F.softmax((t.detach() - center) / t_teacher, dim=-1) for t in teacher]
    logs = [F.log_softmax(s / t_student, dim=-1) for s in student]
    total, pairs = student[0].new_zeros(()), 0
    for i, target in enumerate(targets):
        for j, log in enumerate(logs):
            if i == j:
                continue
            total = total + (-(target * log).sum(-1)).mean()
            pairs += 1
    return total / pairs


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: list[torch.Tensor], momentum: float) -> None:
    """center <- momentum * center + (1 - momentum) * mean of the teacher's logits over views and batch."""
    center.mul_(momentum).add_(torch.cat(teacher).mean(0), alpha=1.0 - momentum)


def teacher_momentum(step: int, total: int, base: float) -> float:
    """DINO's cosine schedule of the teacher's momentum, from ``base`` at step 0 to 1 at the end."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


class DINOObjective(nn.Module):
    """The training objective for the shared loop: holds the teacher and the center, so both are checkpointed
    with the run (``extra_state``) and a resumed run continues exactly.

    Called as ``loss_fn(student, batch, generator)`` with ``batch["views"]``: ``[B, V, C, P, P]`` global views
    and ``batch["local"]``: ``[B, L, C, p, p]`` local crops. Before each loss the teacher takes one EMA step
    towards the current student (the student's previous update), which is DINO's order shifted by one step.
    """

    def __init__(
        self,
        student: DINOModel,
        steps: int,
        t_student: float = 0.1,
        t_teacher: float = 0.04,
        center_momentum: float = 0.9,
        base_momentum: float = 0.996,
    ) -> None:
        super().__init__()
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        self.register_buffer("center", torch.zeros(student.head.prototypes.out_features))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.steps, self.t_student, self.t_teacher = steps, t_student, t_teacher
        self.center_momentum, self.base_momentum = center_momentum, base_momentum

    def forward(self, student: nn.Module, batch: dict[str, torch.Tensor], generator=None):
        model = getattr(student, "module", student)  # unwrapped under DistributedDataParallel
        views, local = batch["views"], batch["local"]
        self.to(views.device)  # the teacher and the center live where the student's batch is
        if int(self.step) > 0:
            ema_update(self.teacher, model, teacher_momentum(int(self.step), self.steps, self.base_momentum))
        self.step += 1
        globals_ = [student(views[:, v]) for v in range(views.shape[1])]
        locals_ = [student(local[:, v]) for v in range(local.shape[1])]
        with torch.no_grad():
            self.teacher.eval()
            teacher = [self.teacher(views[:, v]) for v in range(views.shape[1])]
        loss = dino_loss(globals_ + locals_, teacher, self.center, self.t_student, self.t_teacher)
        probs = F.softmax((torch.cat(teacher) - self.center) / self.t_teacher, dim=-1)
        update_center(self.center, teacher, self.center_momentum)
        with torch.no_grad():
            embedding = model.embed(views[:, 0])
        logged = {
            "teacher_entropy": float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()),
            "prototypes_used": float(probs.argmax(-1).unique().numel()),
            "embedding_std": float(F.normalize(embedding, dim=-1).std(0).mean()),
        }
        return loss, logged
