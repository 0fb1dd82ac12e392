"""KnowledgeEditor (De Cao et al., EMNLP 2021) for decoder-only models, behind the shared `Editor` interface.

A hypernetwork, trained beforehand (`lte train ke`, the loop in `baselines/training.py`), turns one edit into weight
updates. For each edited matrix W (out × in):

    ΔW = σ(η) · (α̂ ⊙ (−∇W L) + β̂),   α̂ = σ(a_out) ⊗ softmax(a_in)·in,   β̂ = tanh(b_out) ⊗ softmax(b_in)·s

where L is the new target's NLL after the edit prompt, and η, a, b come from a condition vector: a bidirectional
LSTM over the model's own (frozen) token embeddings of "prompt ‖ original prediction ‖ new target". We use the
descent direction −∇W L so a positive α̂ moves towards the target. Edited matrices: by default the MLP output
projections of the last two layers (`KEConfig.layers`), a documented and configurable choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines.common import frozen_parameters, target_nll
from baselines.learned import LearnedEditor, LearnedMethod, projection_weights
from lte.core.editor import Query
from lte.core.models import LoadedModel
from lte.core.schema import Edit


@dataclass
class KEConfig:
    """layers: which layers' MLP output projections are edited (negative = from the end).
    hidden: LSTM hidden size of the condition encoder. prediction_tokens: length of the original prediction."""

    layers: tuple[int, ...] = (-2, -1)
    hidden: int = 128
    prediction_tokens: int = 4


class ConditionEncoder(nn.Module):
    """Bidirectional LSTM over frozen token embeddings, mean-pooled."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(embeddings)
        return states.mean(dim=1).squeeze(0)


class MatrixHead(nn.Module):
    """Predicts σ(η), α̂ and β̂ for one (out × in) matrix from the condition vector."""

    def __init__(self, condition: int, out_dim: int, in_dim: int):
        super().__init__()
        self.alpha_out, self.alpha_in = nn.Linear(condition, out_dim), nn.Linear(condition, in_dim)
        self.beta_out, self.beta_in = nn.Linear(condition, out_dim), nn.Linear(condition, in_dim)
        self.gate = nn.Linear(condition, 1)
        self.beta_scale = nn.Parameter(torch.tensor(1e-3))
        nn.init.constant_(self.gate.bias, -2.0)  # start with small updates

    def forward(self, condition: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        in_dim = gradient.shape[1]
        alpha = torch.outer(torch.sigmoid(self.alpha_out(condition)),
                            torch.softmax(self.alpha_in(condition), -1) * in_dim)
        beta = torch.outer(torch.tanh(self.beta_out(condition)),
                           torch.softmax(self.beta_in(condition), -1) * self.beta_scale)
        return torch.sigmoid(self.gate(condition)) * (alpha * -gradient + beta)


class HyperNetwork(nn.Module):
    def __init__(self, embed_dim: int, shapes: dict[str, tuple[int, int]], cfg: KEConfig):
        super().__init__()
        self.names = list(shapes)
        self.encoder = ConditionEncoder(embed_dim, cfg.hidden)
        self.heads = nn.ModuleList(MatrixHead(2 * cfg.hidden, *shapes[name]) for name in self.names)

    def forward(self, embeddings: torch.Tensor, gradients: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        condition = self.encoder(embeddings)
        return {name: head(condition, gradients[name]) for name, head in zip(self.names, self.heads)}


# ---------------------------------------------------------------- the method's three functions

def edited_parameters(loaded: LoadedModel, cfg: KEConfig) -> dict[str, nn.Parameter]:
    return projection_weights(loaded, cfg.layers, "ke")


def edit_gradients(loaded: LoadedModel, edit: Edit, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """∇W of the target's NLL on the edit prompt, at the current weights."""
    with frozen_parameters(loaded.model, trainable=params.values()), torch.enable_grad():
        loss = target_nll(loaded, [(edit.prompt, edit.target_new)])
        grads = torch.autograd.grad(loss, list(params.values()))
    return {name: g.detach() for name, g in zip(params, grads)}


def condition_embeddings(loaded: LoadedModel, edit: Edit, prediction: str) -> torch.Tensor:
    text = f"{edit.prompt} || {prediction.strip()} || {edit.target_new}"
    ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(loaded.model.device)
    with torch.no_grad():
        return loaded.model.get_input_embeddings()(ids).float()


def build_hypernetwork(loaded: LoadedModel, cfg: KEConfig) -> HyperNetwork:
    params = edited_parameters(loaded, cfg)
    embed_dim = loaded.model.get_input_embeddings().weight.shape[1]
    return HyperNetwork(embed_dim, {n: tuple(p.shape) for n, p in params.items()}, cfg).to(loaded.model.device)


def ke_updates(loaded: LoadedModel, hyper: HyperNetwork, params: dict[str, nn.Parameter], predictor, edit: Edit,
               cfg: KEConfig) -> dict[str, torch.Tensor]:
    """ΔW per edited matrix, conditioned on the model's own current answer to the edit prompt."""
    prediction = predictor.generate([Query(edit.prompt)], cfg.prediction_tokens)[0]
    gradients = edit_gradients(loaded, edit, params)
    return hyper(condition_embeddings(loaded, edit, prediction), gradients)


KE = LearnedMethod("ke", KEConfig, edited_parameters, build_hypernetwork, ke_updates)


class KnowledgeEditor(LearnedEditor):
    name = "ke"
    method = KE
