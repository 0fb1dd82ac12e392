"""MEND (Mitchell et al., ICLR 2022): a trained network edits through the factors of the edit's gradient.

For a linear layer W (out × in) the fine-tuning gradient of the edit's loss is a sum over tokens, ∇W = Σₜ δₜ uₜᵀ,
with uₜ the layer's input and δₜ the gradient at its output (`common.gradient_factors`). MEND never forms ∇W: a small
network maps each token's (u, δ) to (ũ, δ̃) and the update is

    ΔW = −ηₗ Σₜ δ̃ₜ ũₜᵀ       (rank ≤ the number of tokens)

The network (one per weight shape, shared by the layers of that shape): [u; δ] standardised with running statistics
(the raw δ are ~1e-4 and u ~1, so without it one scale drowns the other), then h = z + U·relu(sₗ ⊙ V z + oₗ) — a
low-rank MLP with a residual connection and a per-layer scale sₗ and shift oₗ — split back into (ũ, δ̃). U starts at
zero, so an untrained network is a (standardised) gradient step with the learned step size ηₗ. Edited weights: the
MLP output projections of the last three layers (MEND edits the last three blocks' MLPs), `MENDConfig.layers`.
Trained with `lte train mend` (the loop in `baselines/training.py`, shared with KnowledgeEditor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from baselines.common import gradient_factors
from baselines.learned import LearnedEditor, LearnedMethod, projection_weights
from lte.core.models import LoadedModel
from lte.core.schema import Edit


@dataclass
class MENDConfig:
    """layers: which layers' MLP output projections are edited (negative = from the end). rank: the low-rank MLP's
    hidden size (MEND's 1,920 is for 1,600+6,400-wide inputs; ours are 576+1,536 wide). lr_init: the starting step
    size ηₗ of every layer."""

    layers: tuple[int, ...] = (-3, -2, -1)
    rank: int = 128
    lr_init: float = 1e-4


class RunningNorm(nn.Module):
    """Standardises each feature with a running mean and variance, updated only while training with gradients on
    (Chan's parallel update over each batch of tokens); frozen at edit time."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("m2", torch.zeros(width))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.update(x.detach())
        var = self.m2 / self.count.clamp(min=2) if self.count > 1 else torch.ones_like(self.m2)
        return (x - self.mean) / (var + 1e-12).sqrt()  # tiny eps: the δ's variance is ~1e-9

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        n, mean = x.shape[0], x.mean(0)
        total = self.count + n
        shift = mean - self.mean
        self.m2 += ((x - mean) ** 2).sum(0) + shift ** 2 * self.count * n / total
        self.mean += shift * n / total
        self.count.fill_(total)


class FactorNet(nn.Module):
    """(u, δ) → (ũ, δ̃) for one weight shape, shared by `layers` layers (each with its own scale and shift)."""

    def __init__(self, in_dim: int, out_dim: int, layers: int, rank: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.norm = RunningNorm(in_dim + out_dim)
        self.down = nn.Linear(in_dim + out_dim, rank)
        self.up = nn.Linear(rank, in_dim + out_dim)
        nn.init.zeros_(self.up.weight)  # identity at the start: a standardised gradient step
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(layers, rank))
        self.shift = nn.Parameter(torch.zeros(layers, rank))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.norm(torch.cat([u, delta], dim=-1).float())
        h = z + self.up(torch.relu(self.down(z) * self.scale[slot] + self.shift[slot]))
        return h[:, :self.in_dim], h[:, self.in_dim:]


class MENDNetwork(nn.Module):
    """One `FactorNet` per weight shape and a learned log step size per edited weight."""

    def __init__(self, shapes: dict[str, tuple[int, int]], cfg: MENDConfig):
        super().__init__()
        self.names = list(shapes)
        groups: dict[str, list[str]] = {}
        for name, (out_dim, in_dim) in shapes.items():
            groups.setdefault(f"{out_dim}x{in_dim}", []).append(name)
        self.slots = {name: (key, members.index(name)) for key, members in groups.items() for name in members}
        self.nets = nn.ModuleDict({key: FactorNet(shapes[members[0]][1], shapes[members[0]][0], len(members),
                                                  cfg.rank) for key, members in groups.items()})
        self.log_lr = nn.Parameter(torch.full((len(self.names),), math.log(cfg.lr_init)))

    def forward(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        updates = {}
        for index, name in enumerate(self.names):
            key, slot = self.slots[name]
            u, delta = factors[name]
            u_new, delta_new = self.nets[key](u, delta, slot)
            updates[name] = -self.log_lr[index].exp() * (delta_new.T @ u_new)
        return updates


def edited_parameters(loaded: LoadedModel, cfg: MENDConfig) -> dict[str, nn.Parameter]:
    return projection_weights(loaded, cfg.layers, "mend")


def build_network(loaded: LoadedModel, cfg: MENDConfig) -> MENDNetwork:
    params = edited_parameters(loaded, cfg)
    return MENDNetwork({n: tuple(p.shape) for n, p in params.items()}, cfg).to(loaded.model.device)


def mend_updates(loaded: LoadedModel, network: MENDNetwork, params: dict[str, nn.Parameter], predictor, edit: Edit,
                 cfg: MENDConfig) -> dict[str, torch.Tensor]:
    """ΔW per edited weight from the factors of the edit's gradient at the current weights."""
    return network(gradient_factors(loaded, [(edit.prompt, edit.target_new)], params))


# MEND's loss is a fixed weighting, c_edit·L_edit + L_loc with c_edit = 0.1 in its paper: here L_edit + 10·KL
# (lambda_lr 0: no multiplier ascent; lambda_init: the weight).
MEND = LearnedMethod("mend", MENDConfig, edited_parameters, build_network, mend_updates,
                     train_defaults={"lambda_lr": 0.0, "lambda_init": 10.0})


class MENDEditor(LearnedEditor):
    name = "mend"
    method = MEND
