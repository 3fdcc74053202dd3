"""Dynamic gradient reweighting of the loss terms: GradNorm (Chen et al., ICML 2018).

Why GradNorm: the hybrid loss mixes terms whose gradients differ by orders of magnitude (Dice vs. the sparse
topology term) and whose scale drifts during training; GradNorm learns the term weights so that each term's
gradient norm on the last shared layer follows the mean norm, scaled by how slowly that term is improving
(``alpha`` sets how strongly). Weights are renormalised to sum to the number of terms and then kept within
``bounds``: unbounded, GradNorm drove the Dice term's weight to 0.1 while the topology term's rose to 2.2 (the
term the metric cares about was starved), so every weight stays within a factor of the configured one. Written
here: no maintained PyTorch library ships GradNorm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class GradNorm(nn.Module):
    def __init__(
        self, names: Sequence[str], alpha: float = 1.5, lr: float = 0.025, bounds: Sequence[float] = (0.5, 2.0)
    ) -> None:
        super().__init__()
        if not 0 < bounds[0] <= 1 <= bounds[1]:
            raise ValueError(f"GradNorm bounds must satisfy 0 < low <= 1 <= high, got {tuple(bounds)}")
        self.names = list(names)
        self.alpha = alpha
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.weights = nn.Parameter(torch.ones(len(self.names)))
        self.optimizer = torch.optim.Adam([self.weights], lr=lr)
        self.register_buffer("initial", torch.zeros(len(self.names)))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def get_extra_state(self) -> dict:
        """The weights' optimiser state travels with the module's state dict (checkpoints resume exactly)."""
        return self.optimizer.state_dict()

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def as_dict(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.weights.detach(), strict=True)}

    def forward(self, losses: dict[str, torch.Tensor], shared: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return the weighted total loss (weights as constants) and take one GradNorm step on the weights.

        ``shared``: the parameters of the last layer shared by all terms (e.g. the segmentation head).
        """
        values = torch.stack([losses[n] for n in self.names])
        if self.weights.device != values.device:  # the trainer moves the network, not the loss: follow its device
            self.to(values.device)
        if not bool(self.started):
            self.initial.copy_(values.detach().clamp_min(1e-8))
            self.started.fill_(True)
        norms = []
        for value in values:
            grads = torch.autograd.grad(value, list(shared), retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None) + 1e-12))
        norms = torch.stack(norms)
        weighted_norms = self.weights * norms
        ratio = values.detach() / self.initial
        target = (weighted_norms.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        self.optimizer.zero_grad(set_to_none=True)
        (weighted_norms - target).abs().sum().backward(inputs=[self.weights])
        self.optimizer.step()
        with torch.no_grad():
            self.weights.clamp_(*self.bounds)
            self.weights.mul_(len(self.names) / self.weights.sum())
            self.weights.clamp_(*self.bounds)
        return (self.weights.detach() * values).sum()
