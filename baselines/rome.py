"""ROME: Rank-One Model Editing (Meng et al., 2022), behind the shared `Editor` interface.

One edit rewrites the MLP output projection of one layer so that the subject's key maps to a new value:
1. key    k* — the projection's input at the subject's last token, averaged over the plain prompt and short
              prefixes sampled from the model itself;
2. value  δ  — a vector added to the projection's output at that position, optimised so the model predicts the new
              target (with a KL term keeping "{subject} is a" predictions, weight decay and a norm clamp);
3. update W += δ ⊗ C⁻¹k* / (k*ᵀC⁻¹k*), with C = E[kkᵀ] estimated on real text. The same averaged key is used in
              numerator and denominator (the stable variant), so W k* moves by exactly δ.
Prompts are rendered by `lte.core.prompting`, the same text every editor is scored on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from baselines.common import (
    Projection,
    WeightBackup,
    decoder_layers,
    frozen_parameters,
    mlp_projection,
    prefix_cached_batch,
    rendered,
    subject_last_token,
)
from baselines.statistics import capture_inputs, contexts, layer_covariances, regularised, sample_prefixes
from baselines.tracing import saved_layers
from lte.core import prompting
from lte.core.editor import ModelEditor
from lte.core.errors import ConfigError
from lte.core.models import LoadedModel
from lte.core.schema import Edit
from lte.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ROMEConfig:
    """layer: which MLP to edit (chosen for the default model by the layer sweep in benchmarks/rome_layers.py).
    prefixes / prefix_tokens: sampled context prefixes the key and value are averaged over.
    v_steps, v_lr: optimisation of the value; early_stop_nll: stop once the target's mean NLL is below this.
    kl_factor: weight of the KL term on "{subject} is a"; weight_decay: on ‖δ‖²/‖v‖²; clamp_norm: ‖δ‖ ≤ clamp·‖v‖.
    cov_tokens: tokens of text the covariance C is estimated on; ridge: C + ridge·mean(diag C)·I.
    corpus: text files or `datasets` names for C; empty = text sampled from the model itself (offline).
    traced: replace `layer` by the peak of the MLP's effect at the subject's last token in the model's causal trace
    (`lte trace --dataset known_1000 --save`; `baselines.tracing`).
    """

    layer: int = 4
    prefixes: int = 5
    prefix_tokens: int = 8
    v_steps: int = 25
    v_lr: float = 0.5
    early_stop_nll: float = 0.05
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm: float = 4.0
    cov_tokens: int = 20000
    ridge: float = 0.01
    corpus: tuple[str, ...] = ()
    seed: int = 0
    traced: bool = False


@dataclass
class EditLog:
    """What one update did: the denominator k*ᵀC⁻¹k*, the norm of the weight change, and the final target NLL."""

    edit_id: str
    denominator: float
    update_norm: float
    nll: float
    steps: int


# ---------------------------------------------------------------- statistics

def covariance(loaded: LoadedModel, projection: Projection, cfg: ROMEConfig, home: Path) -> torch.Tensor:
    """C = E[kkᵀ] over the edited layer's projection inputs (shared with MEMIT and its kin, cached on disk)."""
    return layer_covariances(loaded, [cfg.layer], cfg.corpus, cfg.cov_tokens, cfg.seed, home)[cfg.layer]


# ---------------------------------------------------------------- the three steps

def compute_key(loaded: LoadedModel, projection: Projection, edit: Edit, prompts: Sequence[str]) -> torch.Tensor:
    """k*: the projection's input at the subject's last token, averaged over the contexts."""
    texts = [prompting.render(loaded.tokenizer, p) for p in prompts]
    keys = []
    with capture_inputs([projection]) as [captured], torch.no_grad():
        for text in texts:
            ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            loaded.model(input_ids=ids.to(loaded.model.device))
            keys.append(captured.pop()[0, subject_last_token(loaded.tokenizer, text, edit.subject)])
    return torch.stack(keys).mean(0)


def compute_value_delta(loaded: LoadedModel, projection: Projection, edit: Edit, prompts: Sequence[str],
                        cfg: ROMEConfig) -> tuple[torch.Tensor, float, int]:
    """δ added to the projection's output at the subject's last token so the model predicts the new target.
    Returns δ, the final target NLL and the steps taken. Rows are split at the subject's last token, so each step
    runs only from there on (see `PrefixCachedBatch`)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    texts, targets = rendered(tokenizer, prompts, edit.target_new)
    kl_prompt = f"{edit.subject} is a"
    texts.append(prompting.render(tokenizer, kl_prompt))
    targets.append(prompting.format_target(kl_prompt, "thing"))
    pivots = [subject_last_token(tokenizer, t, edit.subject) for t in texts]
    kl_row = len(texts) - 1
    delta = torch.zeros(captured_out_dim(projection), device=model.device, requires_grad=True)
    original_outputs: list[torch.Tensor] = []

    def add_delta(module, args, output):
        if not original_outputs:  # the first pass runs with δ = 0: the original values
            original_outputs.append(output[:, 0].detach())
        shifted = output.clone()
        shifted[:, 0] += delta  # position 0 of every suffix is the subject's last token
        return shifted

    optimizer = torch.optim.Adam([delta], lr=cfg.v_lr)
    nll, step = float("inf"), 0
    with frozen_parameters(model):
        batch = prefix_cached_batch(model, tokenizer, texts, targets, pivots)
        kl_pos = batch.target.target_positions[kl_row][0]
        handle = projection.module.register_forward_hook(add_delta)
        try:
            with torch.no_grad():
                base_kl = torch.log_softmax(batch.logits(model)[kl_row, kl_pos].float(), -1)
            value_norm = original_outputs[0][:kl_row].norm(dim=-1).mean()
            for step in range(1, cfg.v_steps + 1):  # noqa: B007 - the steps taken are returned
                logits = batch.logits(model)
                nll = -batch.target.target_logprobs(logits)[:kl_row].mean()
                new_kl = torch.log_softmax(logits[kl_row, kl_pos].float(), -1)
                kl = torch.nn.functional.kl_div(new_kl, base_kl, log_target=True, reduction="sum")
                loss = nll + cfg.kl_factor * kl + cfg.weight_decay * delta.norm() ** 2 / value_norm ** 2
                if nll.item() < cfg.early_stop_nll:
                    break
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():  # keep δ within clamp_norm × the original value's norm
                    limit = cfg.clamp_norm * value_norm
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
        finally:
            handle.remove()
    return delta.detach(), float(nll.item() if torch.is_tensor(nll) else nll), step


def captured_out_dim(projection: Projection) -> int:
    return projection.as_out_in().shape[0]


def apply_update(projection: Projection, key: torch.Tensor, delta: torch.Tensor, cov: torch.Tensor,
                 ridge: float) -> tuple[float, float]:
    """W += δ ⊗ C⁻¹k / (kᵀC⁻¹k): afterwards W k = W₀ k + δ exactly. Returns (denominator, ‖ΔW‖)."""
    cinv_key = torch.linalg.solve(regularised(cov, ridge).double(), key.double())
    denominator = float(key.double() @ cinv_key)
    left = (cinv_key / denominator).float()
    projection.add_rank_one(delta, left)
    return denominator, float(delta.norm() * left.norm())


# ---------------------------------------------------------------- the editor

class ROMEEditor(ModelEditor):
    """Applies edits one after another (batch and sequential modes alike); `restore` puts the weights back exactly."""

    name = "rome"
    config_class = ROMEConfig

    def __init__(self, loaded: LoadedModel, cfg: ROMEConfig | None = None, home: Path | None = None,
                 batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.home = home or Settings.from_env().home
        self.cfg = cfg or ROMEConfig()
        if self.cfg.traced:
            self.cfg = replace(self.cfg, layer=saved_layers(loaded, self.home, 1)[0])
        layers = len(decoder_layers(loaded.model))
        if not 0 <= self.cfg.layer < layers:
            raise ConfigError(f"rome: layer {self.cfg.layer} out of range for {layers} layers")
        self.projection = mlp_projection(loaded.model, self.cfg.layer)
        self.backup = WeightBackup()
        self.log: list[EditLog] = []
        self._cov: torch.Tensor | None = None
        self._prefixes: list[str] | None = None

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: ROMEConfig | None = None,
                    batch_size: int = 16) -> ROMEEditor:
        return cls(loaded, config, settings.home, batch_size)

    @property
    def cov(self) -> torch.Tensor:
        if self._cov is None:
            self._cov = covariance(self.loaded, self.projection, self.cfg, self.home).to(self.loaded.model.device)
        return self._cov

    @property
    def prefixes(self) -> list[str]:
        if self._prefixes is None:
            self._prefixes = sample_prefixes(self.loaded, self.cfg.prefixes, self.cfg.prefix_tokens)
        return self._prefixes

    def apply(self, edits: Sequence[Edit]) -> None:
        for edit in edits:
            self.apply_one(edit)

    def apply_one(self, edit: Edit) -> EditLog:
        prompts = contexts(edit, self.prefixes)
        key = compute_key(self.loaded, self.projection, edit, prompts)
        delta, nll, steps = compute_value_delta(self.loaded, self.projection, edit, prompts, self.cfg)
        self.backup.save(self.projection.weight)
        denominator, norm = apply_update(self.projection, key, delta, self.cov, self.cfg.ridge)
        entry = EditLog(edit.id, denominator, norm, nll, steps)
        log.info("ROME %s: k*ᵀC⁻¹k* = %.4g, ‖ΔW‖ = %.4g, target NLL %.3f after %d steps", edit.id, denominator,
                 norm, nll, steps)
        self.log.append(entry)
        return entry

    def stats(self) -> dict:
        return {"layer": self.cfg.layer}  # as edited: `traced` replaces the configured one

    def restore(self) -> None:
        self.backup.restore()


