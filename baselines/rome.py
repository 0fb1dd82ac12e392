"""ROME: Rank-One Model Editing (Meng et al., 2022), behind the shared `Editor` interface.

One edit rewrites the MLP output projection of one layer so that the subject's key maps to a new value:
1. key    k* — the projection's input at the subject's last token, averaged over the plain prompt and short
              prefixes sampled from the model itself;
2. value  δ  — a vector added to the projection's output at that position, optimised so the model predicts the new
              target (with a KL term keeping "{subject} is a" predictions, weight decay and a norm clamp);
3. update W += δ ⊗ C⁻¹k* / (k*ᵀC⁻¹k*), with C = E[kkᵀ] estimated on real text. The same averaged key is used in
              numerator and denominator (the stable variant), so W k* moves by exactly δ.
Prompts are rendered by `lte.prompting`, the same text every editor is scored on.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from baselines.common import (
    Projection,
    WeightBackup,
    config_from_options,
    decoder_layers,
    mlp_projection,
    rendered,
    subject_last_token,
    target_batch,
)
from baselines.corpus import corpus_texts
from lte import prompting
from lte.editor import ModelEditor
from lte.models import LoadedModel
from lte.schema import Edit
from lte.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ROMEConfig:
    """layer: which MLP to edit (chosen for the default model by the layer sweep in benchmarks/rome_layers.py).
    prefixes / prefix_tokens: sampled context prefixes the key and value are averaged over.
    v_steps, v_lr: optimisation of the value; early_stop_nll: stop once the target's mean NLL is below this.
    kl_factor: weight of the KL term on "{subject} is a"; weight_decay: on ‖δ‖²/‖v‖²; clamp_norm: ‖δ‖ ≤ clamp·‖v‖.
    cov_tokens: tokens of text the covariance C is estimated on; ridge: C + ridge·mean(diag C)·I.
    corpus: text files or `datasets` names for C; empty = text sampled from the model itself (offline).
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
    """C = E[kkᵀ] over the projection's inputs on the corpus, cached on disk with its sample count."""
    path = covariance_path(loaded, cfg, home)
    if path.is_file():
        stats = torch.load(path)
        log.info("ROME: covariance from %s (%d tokens)", path, stats["samples"])
        return stats["cov"]
    total, count = None, 0
    with _capture_inputs(projection) as captured:
        for text in corpus_texts(loaded, cfg.corpus, cfg.cov_tokens, cfg.seed, path.parent / "corpus-self.json"):
            ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt",
                                   truncation=True, max_length=512)["input_ids"].to(loaded.model.device)
            with torch.no_grad():
                loaded.model(input_ids=ids)
            keys = captured.pop().reshape(-1, captured_dim(projection)).double()
            total = keys.T @ keys if total is None else total + keys.T @ keys
            count += keys.shape[0]
            if count >= cfg.cov_tokens:
                break
    cov = (total / count).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cov": cov, "samples": count, "corpus": list(cfg.corpus) or "model-sampled"}, path)
    return cov


def covariance_path(loaded: LoadedModel, cfg: ROMEConfig, home: Path) -> Path:
    corpus = hashlib.sha1("|".join(cfg.corpus).encode()).hexdigest()[:8] if cfg.corpus else "self"
    model = hashlib.sha1(loaded.spec.encode()).hexdigest()[:10]
    return home / "stats" / f"{Path(loaded.spec).name}-{model}" / f"rome-layer{cfg.layer}-{corpus}-{cfg.cov_tokens}.pt"


def captured_dim(projection: Projection) -> int:
    return projection.as_out_in().shape[1]


class _capture_inputs:
    """Context manager: records the projection's input on every forward pass."""

    def __init__(self, projection: Projection):
        self.projection, self.inputs = projection, []

    def __enter__(self) -> list[torch.Tensor]:
        self.handle = self.projection.module.register_forward_pre_hook(
            lambda module, args: self.inputs.append(args[0].detach()))
        return self.inputs

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# ---------------------------------------------------------------- contexts

def sample_prefixes(loaded: LoadedModel, cfg: ROMEConfig) -> list[str]:
    """Short texts the model writes after neutral openings ('The', 'Because', ...), each ending in a full stop."""
    openings = ["The", "Therefore", "Because", "I", "You", "However", "In", "When"][: cfg.prefixes]
    tokenizer = loaded.tokenizer
    batch = tokenizer(openings, return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False).to(loaded.model.device)
    with torch.no_grad():
        output = loaded.model.generate(**batch, max_new_tokens=cfg.prefix_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(output, skip_special_tokens=True)
    return [" ".join(t.replace("\n", " ").split()).rstrip(".") + "." for t in texts]


def contexts(edit: Edit, prefixes: Sequence[str]) -> list[str]:
    """The edit prompt alone and after each prefix (cloze prompts stay clozes, questions stay questions)."""
    return [edit.prompt] + [f"{prefix} {edit.prompt}" for prefix in prefixes]


# ---------------------------------------------------------------- the three steps

def compute_key(loaded: LoadedModel, projection: Projection, edit: Edit, prompts: Sequence[str]) -> torch.Tensor:
    """k*: the projection's input at the subject's last token, averaged over the contexts."""
    texts = [prompting.render(loaded.tokenizer, p) for p in prompts]
    keys = []
    with _capture_inputs(projection) as captured, torch.no_grad():
        for text in texts:
            ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            loaded.model(input_ids=ids.to(loaded.model.device))
            keys.append(captured.pop()[0, subject_last_token(loaded.tokenizer, text, edit.subject)])
    return torch.stack(keys).mean(0)


def compute_value_delta(loaded: LoadedModel, projection: Projection, edit: Edit, prompts: Sequence[str],
                        cfg: ROMEConfig) -> tuple[torch.Tensor, float, int]:
    """δ added to the projection's output at the subject's last token so the model predicts the new target.
    Returns δ, the final target NLL and the steps taken."""
    tokenizer, model, device = loaded.tokenizer, loaded.model, loaded.model.device
    texts, targets = rendered(tokenizer, prompts, edit.target_new)
    kl_prompt = f"{edit.subject} is a"
    kl_text = prompting.render(tokenizer, kl_prompt)
    batch = target_batch(tokenizer, texts + [kl_text], targets + [prompting.format_target(kl_prompt, "thing")],
                         device)
    positions = [subject_last_token(tokenizer, t, edit.subject) for t in texts + [kl_text]]
    kl_row, kl_pos = len(texts), batch.target_positions[-1][0]
    delta = torch.zeros(captured_out_dim(projection), device=device, requires_grad=True)
    original_outputs: list[torch.Tensor] = []

    def add_delta(module, args, output):
        if not original_outputs:  # the first pass runs with δ = 0: the original values
            original_outputs.append(output[torch.arange(len(positions)), positions].detach())
        shifted = output.clone()
        shifted[torch.arange(len(positions)), positions] += delta
        return shifted

    optimizer = torch.optim.Adam([delta], lr=cfg.v_lr)
    handle = projection.module.register_forward_hook(add_delta)
    nll, step = float("inf"), 0
    try:
        with _frozen(model):
            with torch.no_grad():
                base_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            base_kl = torch.log_softmax(base_logits[kl_row, kl_pos].float(), -1)
            value_norm = original_outputs[0][: len(texts)].norm(dim=-1).mean()
            for step in range(1, cfg.v_steps + 1):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                nll_rows = -batch.target_logprobs(logits)[: len(texts)]
                nll = nll_rows.mean()
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
    regularised = cov + ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], device=cov.device)
    cinv_key = torch.linalg.solve(regularised.double(), key.double())
    denominator = float(key.double() @ cinv_key)
    left = (cinv_key / denominator).float()
    projection.add_rank_one(delta, left)
    return denominator, float(delta.norm() * left.norm())


class _frozen:
    """Context manager: no gradients for the model's own parameters while δ is optimised."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)


# ---------------------------------------------------------------- the editor

class ROMEEditor(ModelEditor):
    """Applies edits one after another (batch and sequential modes alike); `restore` puts the weights back exactly."""

    name = "rome"

    def __init__(self, loaded: LoadedModel, cfg: ROMEConfig | None = None, home: Path | None = None,
                 batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.cfg = cfg or ROMEConfig()
        layers = len(decoder_layers(loaded.model))
        if not 0 <= self.cfg.layer < layers:
            raise ValueError(f"rome: layer {self.cfg.layer} out of range for {layers} layers")
        self.projection = mlp_projection(loaded.model, self.cfg.layer)
        self.home = home or Settings.from_env().home
        self.backup = WeightBackup()
        self.log: list[EditLog] = []
        self._cov: torch.Tensor | None = None
        self._prefixes: list[str] | None = None

    @classmethod
    def from_options(cls, settings: Settings, loaded: LoadedModel, batch_size: int = 16, **options) -> "ROMEEditor":
        return cls(loaded, config_from_options(ROMEConfig, options), settings.home, batch_size)

    @property
    def cov(self) -> torch.Tensor:
        if self._cov is None:
            self._cov = covariance(self.loaded, self.projection, self.cfg, self.home).to(self.loaded.model.device)
        return self._cov

    @property
    def prefixes(self) -> list[str]:
        if self._prefixes is None:
            self._prefixes = sample_prefixes(self.loaded, self.cfg)
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

    def restore(self) -> None:
        self.backup.restore()


