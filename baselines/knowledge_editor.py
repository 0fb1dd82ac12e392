"""KnowledgeEditor (De Cao et al., EMNLP 2021) for decoder-only models, behind the shared `Editor` interface.

A hypernetwork, trained beforehand (`lte train ke`, see `baselines/ke_training.py`), turns one edit into weight
updates. For each edited matrix W (out × in):

    ΔW = σ(η) · (α̂ ⊙ (−∇W L) + β̂),   α̂ = σ(a_out) ⊗ softmax(a_in)·in,   β̂ = tanh(b_out) ⊗ softmax(b_in)·s

where L is the new target's NLL after the edit prompt, and η, a, b come from a condition vector: a bidirectional
LSTM over the model's own (frozen) token embeddings of "prompt ‖ original prediction ‖ new target". We use the
descent direction −∇W L so a positive α̂ moves towards the target. Edited matrices: by default the MLP output
projections of the last two layers (`KEConfig.layers`), a documented and configurable choice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from baselines.common import (
    WeightBackup,
    decoder_layers,
    frozen_parameters,
    mlp_projection,
    rendered,
    target_batch,
)
from lte.editor import ModelEditor
from lte.errors import CheckpointError, EditorUnavailableError
from lte.models import LoadedModel
from lte.schema import Edit
from lte.settings import Settings


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


# ---------------------------------------------------------------- shared by editing and training

def edited_parameters(loaded: LoadedModel, cfg: KEConfig) -> dict[str, nn.Parameter]:
    """Parameter name → the (out × in) weights KE edits. GPT-2's transposed Conv1D is not supported here."""
    count = len(decoder_layers(loaded.model))
    names = dict(loaded.model.named_parameters())
    chosen = {}
    for layer in cfg.layers:
        projection = mlp_projection(loaded.model, layer % count)
        if projection.transposed:
            raise EditorUnavailableError("ke: transposed (Conv1D) projections are not supported")
        name = next(n for n, p in names.items() if p is projection.weight)
        chosen[name] = projection.weight
    return chosen


def edit_loss(loaded: LoadedModel, prompts: Sequence[str], target: str,
              overrides: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean NLL of `target` after each prompt, with `overrides` replacing weights (functionally)."""
    texts, targets = rendered(loaded.tokenizer, prompts, target)
    batch = target_batch(loaded.tokenizer, texts, targets, loaded.model.device)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    logits = functional_call(loaded.model, overrides or {}, args=(), kwargs=inputs).logits
    return -batch.target_logprobs(logits).mean()


def edit_gradients(loaded: LoadedModel, edit: Edit, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """∇W of the target's NLL on the edit prompt, at the current weights."""
    with frozen_parameters(loaded.model, trainable=params.values()):
        loss = edit_loss(loaded, [edit.prompt], edit.target_new)
        grads = torch.autograd.grad(loss, list(params.values()))
    return {name: g.detach() for name, g in zip(params, grads)}


def condition_embeddings(loaded: LoadedModel, edit: Edit, prediction: str) -> torch.Tensor:
    text = f"{edit.prompt} || {prediction.strip()} || {edit.target_new}"
    ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(loaded.model.device)
    with torch.no_grad():
        return loaded.model.get_input_embeddings()(ids).float()


def original_prediction(editor: ModelEditor, edit: Edit, tokens: int) -> str:
    from lte.editor import Query

    return editor.generate([Query(edit.prompt)], tokens)[0]


# ---------------------------------------------------------------- checkpoints

@dataclass
class Checkpoint:
    model: str
    config: KEConfig
    state: dict
    curve: list[dict] = field(default_factory=list)
    step: int = 0

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model, "config": asdict(self.config), "state": self.state, "curve": self.curve,
                    "step": self.step}, tmp)
        tmp.replace(path)
        path.with_suffix(".curve.json").write_text(json.dumps(self.curve, indent=1))

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        saved = torch.load(path, weights_only=False)
        config = KEConfig(**{**saved["config"], "layers": tuple(saved["config"]["layers"])})
        return cls(saved["model"], config, saved["state"], saved.get("curve", []), saved.get("step", 0))


def default_checkpoint(home: Path, model_spec: str) -> Path:
    import hashlib

    key = hashlib.sha1(model_spec.encode()).hexdigest()[:10]
    return home / "ke" / f"{Path(model_spec).name}-{key}" / "ke.pt"


def build_hypernetwork(loaded: LoadedModel, cfg: KEConfig) -> HyperNetwork:
    params = edited_parameters(loaded, cfg)
    embed_dim = loaded.model.get_input_embeddings().weight.shape[1]
    return HyperNetwork(embed_dim, {n: tuple(p.shape) for n, p in params.items()}, cfg).to(loaded.model.device)


# ---------------------------------------------------------------- the editor

@dataclass
class KEOptions:
    """checkpoint: the trained hypernetwork (default: the latest `lte train ke` wrote for --model). Everything else
    (`KEConfig`: layers, hidden size...) is fixed by the checkpoint it was trained with."""

    checkpoint: str | None = None


class KnowledgeEditor(ModelEditor):
    """Edits by adding the hypernetwork's ΔW; sequential edits accumulate; `restore` is exact."""

    name = "ke"
    config_class = KEOptions
    fixed_options = {f.name: "fixed by the trained checkpoint (KEConfig at `lte train ke` time)"
                     for f in fields(KEConfig)}

    def __init__(self, loaded: LoadedModel, checkpoint: Checkpoint, batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.cfg = checkpoint.config
        self.params = edited_parameters(loaded, self.cfg)
        self.hyper = build_hypernetwork(loaded, self.cfg)
        self.hyper.load_state_dict(checkpoint.state)
        self.hyper.eval()
        self.backup = WeightBackup()

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: KEOptions | None = None,
                    batch_size: int = 16) -> KnowledgeEditor:
        config = config or KEOptions()
        path = Path(config.checkpoint) if config.checkpoint else default_checkpoint(settings.home, loaded.spec)
        if not path.is_file():
            raise CheckpointError(
                f"ke: no trained hypernetwork at {path}. Train one for this model first: "
                f"`lte --model {loaded.spec} train ke --data <training split>` (or pass --set checkpoint=PATH)")
        checkpoint = Checkpoint.load(path)
        if checkpoint.model != loaded.spec:
            raise CheckpointError(f"ke: checkpoint {path} was trained for model '{checkpoint.model}', "
                                  f"not '{loaded.spec}'")
        return cls(loaded, checkpoint, batch_size)

    def apply(self, edits: Sequence[Edit]) -> None:
        for edit in edits:
            self.apply_one(edit)

    def apply_one(self, edit: Edit) -> None:
        prediction = original_prediction(self, edit, self.cfg.prediction_tokens)
        gradients = edit_gradients(self.loaded, edit, self.params)
        with torch.no_grad():
            updates = self.hyper(condition_embeddings(self.loaded, edit, prediction), gradients)
            for name, delta in updates.items():
                self.backup.save(self.params[name])
                self.params[name].add_(delta.to(self.params[name].dtype))

    def restore(self) -> None:
        self.backup.restore()
