"""GRACE: lifelong editing with a discrete key-value codebook (Hartvigsen et al., NeurIPS 2023).

An adaptor wraps the MLP of one chosen layer. Its codebook entries hold a key (the MLP's input activation), a
value (a replacement for the MLP's output) and a deferral radius ε. At every position, if the input's nearest key
lies within that entry's radius (Euclidean distance), the MLP output there is replaced by the entry's value;
otherwise the layer runs unchanged.

Which positions get entries: an edit's answer of T tokens gets one entry per answer token — the key at the position
that predicts token i (the last prompt token for i = 0, then each teacher-forced answer token). Keys at this layer
depend only on earlier layers and positions, never on replaced outputs, so free generation meets the same keys as
teacher forcing and a multi-token answer is produced in generation too. An entry's "target" is the token id it
predicts; targets are compared by exact token id:
- no entry within reach of a new key → add one (value trained so the model emits the target token);
- nearest entry covers the key and has the same target → expand its radius to reach the key;
- nearest entry covers the key but has another target → split: shrink both radii to half their distance, add one.
Editing is switched on by `enabled`, never by the module's training mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from baselines.common import (
    decoder_layers,
    frozen_parameters,
    prefix_cached_batch,
    rendered,
)
from lte.core import files
from lte.core.editor import ModelEditor
from lte.core.errors import ConfigError
from lte.core.models import LoadedModel
from lte.core.schema import Edit
from lte.core.scoring import target_ids
from lte.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class GRACEConfig:
    """layer: whose MLP is wrapped (late layers keep edits local). eps_init: initial radius; None = calibrate
    from the model's own key distances (eps_quantile of nearest-neighbour distances between different prompts,
    halved so two unrelated prompts' balls do not overlap). value_steps / value_lr: training of a new value."""

    layer: int = 24
    eps_init: float | None = None
    eps_quantile: float = 0.05
    value_steps: int = 60
    value_lr: float = 1.0


class Codebook(nn.Module):
    """Keys, values, radii and target token ids of all entries."""

    def __init__(self, key_dim: int, value_dim: int):
        super().__init__()
        self.register_buffer("keys", torch.zeros(0, key_dim))
        self.register_buffer("values", torch.zeros(0, value_dim))
        self.register_buffer("radii", torch.zeros(0))
        self.register_buffer("targets", torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return self.keys.shape[0]

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to, and index of, the nearest key for each query row."""
        distances = torch.cdist(queries.float(), self.keys.float())
        return distances.min(dim=-1)

    def add(self, key: torch.Tensor, value: torch.Tensor, radius: float, target: int) -> None:
        self.keys = torch.cat([self.keys, key[None].to(self.keys)])
        self.values = torch.cat([self.values, value[None].detach().to(self.values)])
        self.radii = torch.cat([self.radii, torch.tensor([radius]).to(self.radii)])
        self.targets = torch.cat([self.targets, torch.tensor([target], device=self.targets.device)])


class GraceAdaptor(nn.Module):
    """Wraps an MLP; replaces its output where the input falls in a codebook entry's ball."""

    def __init__(self, inner: nn.Module, key_dim: int, value_dim: int):
        super().__init__()
        self.inner = inner
        self.codebook = Codebook(key_dim, value_dim)
        self.enabled = True
        self.forced: tuple[list[int], torch.Tensor] | None = None  # (positions, values) while training a value
        self.last_inputs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.last_inputs = x.detach()
        if self.forced is not None:
            positions, values = self.forced
            out = out.clone()
            out[0, positions] = values
            return out
        if not self.enabled or len(self.codebook) == 0:
            return out
        flat = x.reshape(-1, x.shape[-1])
        distance, index = self.codebook.nearest(flat)
        hit = distance <= self.codebook.radii[index]
        if not hit.any():
            return out
        replaced = out.reshape(-1, out.shape[-1]).clone()
        replaced[hit] = self.codebook.values[index[hit]].to(replaced.dtype)
        return replaced.reshape(out.shape)


class GRACEEditor(ModelEditor):
    name = "grace"
    config_class = GRACEConfig

    def __init__(self, loaded: LoadedModel, cfg: GRACEConfig | None = None, batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.cfg = cfg or GRACEConfig()
        layers = decoder_layers(loaded.model)
        if not 0 <= self.cfg.layer < len(layers):
            raise ConfigError(f"grace: layer {self.cfg.layer} out of range for {len(layers)} layers")
        self.layer = layers[self.cfg.layer]
        self.adaptor: GraceAdaptor | None = None
        self.eps_init = self.cfg.eps_init

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: GRACEConfig | None = None,
                    batch_size: int = 16) -> GRACEEditor:
        return cls(loaded, config, batch_size)

    # ------------------------------------------------------------ adaptor lifecycle

    def ensure_adaptor(self) -> GraceAdaptor:
        if self.adaptor is None:
            hidden = self.loaded.model.config.hidden_size
            self.adaptor = GraceAdaptor(self.layer.mlp, hidden, hidden).to(self.loaded.model.device)
            self.layer.mlp = self.adaptor
        return self.adaptor

    def stats(self) -> dict:
        return {"codebook_entries": len(self.adaptor.codebook) if self.adaptor else 0}

    def restore(self) -> None:
        """Unwrap: the original MLP module is put back, untouched."""
        if self.adaptor is not None:
            self.layer.mlp = self.adaptor.inner
            self.adaptor = None

    def save_codebook(self, path: Path) -> None:
        with files.atomic_path(path) as tmp:
            torch.save({"layer": self.cfg.layer, "state": self.ensure_adaptor().codebook.state_dict()}, tmp)

    def load_codebook(self, path: Path) -> None:
        saved = torch.load(path)
        if saved["layer"] != self.cfg.layer:
            raise ConfigError(f"{path}: codebook is for layer {saved['layer']}, editor wraps layer {self.cfg.layer}")
        codebook = self.ensure_adaptor().codebook
        for name, tensor in saved["state"].items():
            setattr(codebook, name, tensor.to(self.loaded.model.device))

    # ------------------------------------------------------------ editing

    def apply(self, edits: Sequence[Edit]) -> None:
        adaptor = self.ensure_adaptor()
        if self.eps_init is None:
            self.eps_init = calibrate_radius(self, self.cfg.eps_quantile)["eps_init"]
        for edit in edits:
            self.apply_one(adaptor, edit)

    def apply_one(self, adaptor: GraceAdaptor, edit: Edit) -> None:
        keys, positions, targets = self.answer_keys(edit)
        values = self.train_values(adaptor, edit, positions, targets)
        for key, value, target in zip(keys, values, targets):
            update_codebook(adaptor.codebook, key, value, target, self.eps_init)

    def answer_keys(self, edit: Edit) -> tuple[torch.Tensor, list[int], list[int]]:
        """Keys at the positions predicting each answer token, those positions, and the answer's token ids."""
        [text], [target] = rendered(self.loaded.tokenizer, [edit.prompt], edit.target_new)
        prompt_ids, answer_ids = target_ids(self.loaded.tokenizer, text, target)
        positions = list(range(len(prompt_ids) - 1, len(prompt_ids) + len(answer_ids) - 1))
        adaptor = self.ensure_adaptor()
        adaptor.enabled = False
        try:
            with torch.no_grad():
                self.loaded.model(input_ids=torch.tensor([prompt_ids + answer_ids], device=self.loaded.model.device))
        finally:
            adaptor.enabled = True
        return adaptor.last_inputs[0, positions], positions, answer_ids

    def train_values(self, adaptor: GraceAdaptor, edit: Edit, positions: list[int], targets: list[int]) -> torch.Tensor:
        """Values replacing the MLP output at `positions` so the model predicts `targets` there. The prompt before
        the first answer position runs once (`PrefixCachedBatch`); each step runs only the answer positions."""
        texts, answers = rendered(self.loaded.tokenizer, [edit.prompt], edit.target_new)
        wanted = torch.tensor(targets, device=self.loaded.model.device)
        with torch.no_grad():  # last_inputs: the full prompt+answer pass of `answer_keys`
            start = adaptor.inner(adaptor.last_inputs)[0, positions]
        with frozen_parameters(self.loaded.model):
            adaptor.enabled = False  # the prefix runs as in training: no codebook, nothing forced
            try:
                batch = prefix_cached_batch(self.loaded.model, self.loaded.tokenizer, texts, answers, positions[:1])
            finally:
                adaptor.enabled = True
            relative = [i - positions[0] for i in positions]
            values = start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([values], lr=self.cfg.value_lr)
            try:
                for _ in range(self.cfg.value_steps):
                    adaptor.forced = (relative, values)
                    logits = batch.logits(self.loaded.model)[0, batch.target.target_positions[0]].float()
                    if bool((logits.argmax(-1) == wanted).all()):
                        break
                    loss = nn.functional.cross_entropy(logits, wanted)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            finally:
                adaptor.forced = None
        return values.detach()


def update_codebook(codebook: Codebook, key: torch.Tensor, value: torch.Tensor, target: int, eps_init: float) -> str:
    """GRACE's edit rule for one key; returns which branch was taken ('add', 'expand' or 'split')."""
    if len(codebook) == 0:
        codebook.add(key, value, eps_init, target)
        return "add"
    distance, index = (t.item() for t in codebook.nearest(key[None]))
    radius = codebook.radii[index].item()
    if distance > radius + eps_init:  # the balls would not touch: a new entry
        codebook.add(key, value, eps_init, target)
        return "add"
    if codebook.targets[index].item() == target:
        codebook.radii[index] = max(radius, distance)
        return "expand"
    half = distance / 2
    codebook.radii[index] = min(radius, half)
    codebook.add(key, value, min(eps_init, half), target)
    return "split"


def calibrate_radius(editor: GRACEEditor, quantile: float, prompts: Sequence[str] | None = None) -> dict:
    """ε_init from the model's own keys: the `quantile` of nearest-neighbour distances between the last-token keys
    of different prompts, halved. Returns the distribution summary (for reports) and stores nothing."""
    from lte_data import data_lines

    if prompts is None:
        prompts = data_lines("instructions.txt")
    adaptor = editor.ensure_adaptor()
    keys = []
    adaptor.enabled = False
    try:
        for text in rendered(editor.loaded.tokenizer, prompts, "x")[0]:
            ids = editor.loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                editor.loaded.model(input_ids=ids.to(editor.loaded.model.device))
            keys.append(adaptor.last_inputs[0, -1])
    finally:
        adaptor.enabled = True
    stacked = torch.stack(keys).float()
    distances = torch.cdist(stacked, stacked) + torch.eye(len(keys)) * 1e9
    nearest = distances.min(dim=-1).values
    summary = {"eps_init": float(torch.quantile(nearest, quantile)) / 2, "nn_min": float(nearest.min()),
               "nn_median": float(nearest.median()), "nn_max": float(nearest.max()), "n": len(keys)}
    log.info("GRACE radius calibration: %s", summary)
    return summary
