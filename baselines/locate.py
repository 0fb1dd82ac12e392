"""The locate-then-edit core that MEMIT, EMMET and AlphaEdit share: one batch of edits written into the MLP output
projections of several layers. Only the closed-form solve differs between the methods (`solve` of each editor).

For a batch of n edits and edited layers l₁ … l_R (the last one, l_R, holds the targets):
1. targets  Z — for each edit, the residual stream (the output of block l_R at the subject's last token) that makes
              the model predict the new target: z = h + δ, with δ optimised for every edit of a chunk in one forward
              (context templates, a KL term on "{subject} is a", weight decay, a norm clamp, early stop);
2. keys     K — at each edited layer in turn, the projection's input at the subject's last token, averaged over the
              same contexts, read on the weights as already updated for the earlier layers;
3. spread     the remaining residual Z − h (h read again on the current weights) is shared out evenly over the
              layers still to edit: (Z − h) / (layers left);
4. solve   ΔW — the method's closed form from K, the residual and the layer's statistics; W += ΔW (float64 solve).
Prompts are rendered by `lte.core.prompting`, as every editor's are; prefixes and covariances come from
`baselines.statistics`, shared with ROME.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from baselines.common import (
    PrefixCachedBatch,
    WeightBackup,
    decoder_layers,
    frozen_parameters,
    mlp_projection,
    prefix_cached_batch,
    rendered,
    subject_last_token,
)
from baselines.statistics import capture_inputs, contexts, layer_covariances, model_stats_dir, sample_prefixes
from baselines.tracing import saved_layers
from lte.core import files, prompting
from lte.core.editor import ModelEditor
from lte.core.errors import ConfigError
from lte.core.models import LoadedModel
from lte.core.schema import Edit
from lte.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LocateConfig:
    """Options every locate-then-edit method shares.

    layers: the MLP projections edited; the targets live at the last one. 3-7 on the default 30-layer model: of
    2-6 … 5-9 it kept the best locality (0.80 against 0.53-0.67, reliability prob_win 1.00 everywhere;
    results/memit-layers.txt), with ROME's layer 4 inside it as in the reference configs.
    prefixes / prefix_tokens: context prefixes keys and targets are averaged over (MEMIT: 5 plus the bare prompt).
    v_steps, v_lr, early_stop_nll: the optimisation of δ (MEMIT's 25 steps at 0.5; each edit stops once its own
    target NLL is below early_stop_nll). kl_factor: weight of the KL term on "{subject} is a". weight_decay: on ‖δ‖/‖h‖²
    (MEMIT's form). clamp_norm: ‖δ‖ ≤ clamp_norm·‖h‖ (MEMIT's 0.75 of the residual's norm).
    z_chunk: edits whose δ are optimised together in one forward (memory grows with it; 16 edits are ~110 rows).
    cov_tokens, corpus, seed: the covariance statistics (see ROMEConfig; the same cache).
    cache_targets: keep the targets computed on the unedited model (the first batch after a restore) in
    HOME/stats/<model>/targets-<settings>.pt and reuse them (see `unedited_targets`).
    traced: replace `layers` by as many consecutive layers where the model's causal trace (`lte trace --dataset
    known_1000 --save`) puts the largest MLP effect at the subject's last token (`baselines.tracing`).
    """

    layers: tuple[int, ...] = (3, 4, 5, 6, 7)
    prefixes: int = 5
    prefix_tokens: int = 8
    v_steps: int = 25
    v_lr: float = 0.5
    early_stop_nll: float = 0.05
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm: float = 0.75
    z_chunk: int = 16
    cov_tokens: int = 20000
    corpus: tuple[str, ...] = ()
    seed: int = 0
    cache_targets: bool = True
    traced: bool = False


@dataclass
class BatchLog:
    """What one batch did: edits, the targets' final NLL, and per layer the update's norm and rank."""

    edits: int
    z_nll: float
    update_norm: dict[int, float] = field(default_factory=dict)
    update_rank: dict[int, int] = field(default_factory=dict)


# ---------------------------------------------------------------- reading the residual stream

def block_output(output) -> torch.Tensor:
    """A decoder block's hidden states, whether the block returns a tensor (recent transformers) or a tuple."""
    return output[0] if isinstance(output, tuple) else output


def with_block_output(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def subject_rows(loaded: LoadedModel, edits: Sequence[Edit], prefixes: Sequence[str]) -> tuple[list[str], list[int],
                                                                                             list[int]]:
    """Every edit's prompt in every context, rendered: (texts, the subject's last token in each, the edit of each)."""
    texts, positions, owners = [], [], []
    for i, edit in enumerate(edits):
        for prompt in contexts(edit, prefixes):
            text = prompting.render(loaded.tokenizer, prompt)
            texts.append(text)
            positions.append(subject_last_token(loaded.tokenizer, text, edit.subject))
            owners.append(i)
    return texts, positions, owners


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the block that is read has run."""


def run_rows(loaded: LoadedModel, texts: Sequence[str], last_layer: int, grad: bool = False) -> None:
    """One right-padded forward over rendered texts, ended after block `last_layer` (hooks read what they need;
    nothing later is read, and skipping it made reading the keys of layers 3-7 five times cheaper). `grad`: keep
    the graph (for what hooks compute from trainable weights)."""
    batch = loaded.tokenizer(list(texts), add_special_tokens=False, padding=True, padding_side="right",
                             return_tensors="pt").to(loaded.model.device)

    def stop(module, args, output):
        raise StopForward

    handle = decoder_layers(loaded.model)[last_layer].register_forward_hook(stop)
    try:
        with torch.set_grad_enabled(grad):
            loaded.model(**batch)
    except StopForward:
        pass
    finally:
        handle.remove()


def layer_keys(loaded: LoadedModel, layer: int, edits: Sequence[Edit], prefixes: Sequence[str]) -> torch.Tensor:
    """K (n × f): the projection's input at each edit's subject, averaged over its contexts."""
    texts, positions, owners = subject_rows(loaded, edits, prefixes)
    with capture_inputs([mlp_projection(loaded.model, layer)]) as [captured]:
        run_rows(loaded, texts, layer)
    inputs = captured[0]
    rows = inputs[torch.arange(len(texts)), torch.tensor(positions)]
    owner = torch.tensor(owners, device=rows.device)
    return torch.stack([rows[owner == i].mean(0) for i in range(len(edits))])


def residuals_at(loaded: LoadedModel, layer: int, edits: Sequence[Edit]) -> torch.Tensor:
    """h (n × d): block `layer`'s output at each edit's subject, on the plain prompts."""
    texts, positions, _ = subject_rows(loaded, edits, [])
    outputs: list[torch.Tensor] = []
    handle = decoder_layers(loaded.model)[layer].register_forward_hook(
        lambda module, args, output: outputs.append(block_output(output).detach()))
    try:
        run_rows(loaded, texts, layer)  # the stop hook runs after this recording one
    finally:
        handle.remove()
    return outputs[0][torch.arange(len(texts)), torch.tensor(positions)]


# ---------------------------------------------------------------- 1. targets

def target_residuals(loaded: LoadedModel, edits: Sequence[Edit], prefixes: Sequence[str],
                     cfg: LocateConfig) -> tuple[torch.Tensor, list[float]]:
    """Z (n × d) at the last edited layer, and each edit's final target NLL; δ optimised `z_chunk` edits at a time."""
    targets, nlls = [], []
    for start in range(0, len(edits), cfg.z_chunk):
        z, nll = chunk_targets(loaded, edits[start:start + cfg.z_chunk], prefixes, cfg)
        targets.append(z)
        nlls += nll
    return torch.cat(targets), nlls


# What a target depends on besides the model and the edit (the layer it lives at is added).
TARGET_FIELDS = ("prefixes", "prefix_tokens", "v_steps", "v_lr", "early_stop_nll", "kl_factor", "weight_decay",
                 "clamp_norm", "z_chunk")


def targets_path(loaded: LoadedModel, cfg: LocateConfig, home: Path) -> Path:
    settings = {name: getattr(cfg, name) for name in TARGET_FIELDS} | {"layer": cfg.layers[-1]}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return model_stats_dir(loaded, home) / f"targets-{key}.pt"


def edit_key(edit: Edit) -> str:
    return hashlib.sha1(f"{edit.subject}\0{edit.prompt}\0{edit.target_new}".encode()).hexdigest()[:16]


def unedited_targets(loaded: LoadedModel, edits: Sequence[Edit], prefixes: Sequence[str], cfg: LocateConfig,
                     home: Path) -> tuple[torch.Tensor, list[float]]:
    """`target_residuals` on the unedited model, through a per-edit cache next to the covariances: a target there
    depends only on the model, the edit and the optimisation's settings, so runs that differ only in the solve
    (MEMIT's λ, AlphaEdit's null space) or re-run a cell optimise each δ once. Saved after every chunk of
    `z_chunk` edits, so a long run that is interrupted resumes where it stopped (the chunks are the same)."""
    path = targets_path(loaded, cfg, home)
    cache: dict[str, tuple[torch.Tensor, float]] = torch.load(path) if path.is_file() else {}
    missing = list({edit_key(e): e for e in edits if edit_key(e) not in cache}.values())
    chunks = range(0, len(missing), cfg.z_chunk)
    for start in tqdm(chunks, desc="targets", unit="chunk", disable=len(chunks) < 2):
        chunk = missing[start:start + cfg.z_chunk]
        z, nlls = target_residuals(loaded, chunk, prefixes, cfg)
        cache.update({edit_key(e): (row.detach().cpu(), nll) for e, row, nll in zip(chunk, z, nlls)})
        with files.atomic_path(path) as tmp:  # after every chunk: an interrupted run keeps what it optimised
            torch.save(cache, tmp)
    rows = [cache[edit_key(e)] for e in edits]
    return torch.stack([z for z, _ in rows]).to(loaded.model.device), [nll for _, nll in rows]


def chunk_targets(loaded: LoadedModel, edits: Sequence[Edit], prefixes: Sequence[str],
                  cfg: LocateConfig) -> tuple[torch.Tensor, list[float]]:
    """One forward per step for all edits of the chunk: each row gets its own edit's δ at the subject's last token
    (the pivot of a prefix-cached batch, so each step runs only from there on)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    texts, targets, owners, kl_rows = [], [], [], []
    for i, edit in enumerate(edits):
        rows, shaped = rendered(tokenizer, contexts(edit, prefixes), edit.target_new)
        texts += rows
        targets += shaped
        owners += [i] * len(rows)
        kl_prompt = f"{edit.subject} is a"
        kl_rows.append(len(texts))
        texts.append(prompting.render(tokenizer, kl_prompt))
        targets.append(prompting.format_target(kl_prompt, "thing"))
        owners.append(i)
    pivots = [subject_last_token(tokenizer, t, edits[o].subject) for t, o in zip(texts, owners)]
    owner = torch.tensor(owners, device=model.device)
    plain = torch.tensor([owners.index(i) for i in range(len(edits))], device=model.device)
    delta = torch.zeros(len(edits), model.config.hidden_size, device=model.device, requires_grad=True)
    hook = DeltaAtPivot(delta, owner)
    with frozen_parameters(model):
        batch = prefix_cached_batch(model, tokenizer, texts, targets, pivots)
        handle = decoder_layers(model)[cfg.layers[-1]].register_forward_hook(hook)
        try:
            nll = optimise_delta(model, batch, hook, torch.tensor(kl_rows, device=model.device), cfg)
        finally:
            handle.remove()
    return hook.originals[plain] + delta.detach(), nll


class DeltaAtPivot:
    """Forward hook on the last edited block: adds each row's edit's δ at position 0 of its suffix (the subject's
    last token). `owner` gives the edit of each row of the batch being run; the first pass (δ = 0) records the
    original residuals."""

    def __init__(self, delta: torch.Tensor, owner: torch.Tensor):
        self.delta, self.owner = delta, owner
        self.originals: torch.Tensor | None = None

    def __call__(self, module, args, output):
        hidden = block_output(output)
        if self.originals is None:
            self.originals = hidden[:, 0].detach()
        shifted = hidden.clone()
        shifted[:, 0] += self.delta[self.owner]
        return with_block_output(output, shifted)


def per_edit_mean(values: torch.Tensor, owners: torch.Tensor, n: int) -> torch.Tensor:
    """The mean of each edit's rows (0 for an edit with no row here), in float32 whatever the model's dtype."""
    values = values.float()
    sums = torch.zeros(n, device=values.device).index_add(0, owners, values)
    counts = torch.zeros(n, device=values.device).index_add(0, owners, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def optimise_delta(model, batch: PrefixCachedBatch, hook: DeltaAtPivot, kl_rows: torch.Tensor,
                   cfg: LocateConfig) -> list[float]:
    """Adam on δ: per edit, mean target NLL over its contexts + KL on its "is a" row + weight decay; clamped.
    An edit stops as soon as its own NLL is below early_stop_nll, as it would alone (MEMIT's reference optimises
    each edit separately); its rows then leave the batch, so a step costs only the edits still moving."""
    delta, owner = hook.delta, hook.owner
    n = delta.shape[0]
    is_target = torch.ones(len(owner), dtype=torch.bool, device=owner.device)
    is_target[kl_rows] = False
    with torch.no_grad():  # δ = 0: records the original residuals and the KL reference
        logits = batch.logits(model)
        base_kl = torch.log_softmax(logits[kl_rows, [batch.target.target_positions[int(r)][0] for r in kl_rows]]
                                    .float(), -1)  # one row per edit, in edit order
    norms = per_edit_mean(hook.originals.norm(dim=-1)[is_target], owner[is_target], n)
    optimizer = torch.optim.Adam([delta], lr=cfg.v_lr)
    per_edit = torch.full((n,), float("inf"), device=delta.device)
    active, sub, rows = torch.ones(n, dtype=torch.bool, device=delta.device), batch, torch.arange(len(owner))
    for _ in range(cfg.v_steps):
        logits = sub.logits(model)
        row_nll = -sub.target.target_logprobs(logits)
        targets, kls = is_target[rows], ~is_target[rows]
        nll = per_edit_mean(row_nll[targets], owner[rows][targets], n)
        per_edit = torch.where(active, nll.detach(), per_edit)
        moving = active & (per_edit >= cfg.early_stop_nll)
        if not moving.any():
            break
        kl_edits = owner[rows][kls]
        kl_pos = [sub.target.target_positions[int(r)][0] for r in kls.nonzero()[:, 0]]
        new_kl = torch.log_softmax(logits[kls.nonzero()[:, 0], kl_pos].float(), -1)
        kl = torch.zeros(n, device=delta.device).index_add(0, kl_edits, torch.nn.functional.kl_div(
            new_kl, base_kl[kl_edits], log_target=True, reduction="none").sum(-1))
        decay = cfg.weight_decay * delta.norm(dim=-1) / norms ** 2
        loss = (nll + cfg.kl_factor * kl + decay)[moving].sum()  # each δ only moves its own rows: n losses in one
        before = delta.detach().clone()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # ‖δ‖ ≤ clamp_norm·‖h‖, edit by edit; finished edits keep their δ (Adam's momentum)
            limits = cfg.clamp_norm * norms
            delta.mul_(torch.clamp(limits / delta.norm(dim=-1).clamp_min(1e-12), max=1.0)[:, None])
            delta[~moving] = before[~moving]
        if not torch.equal(moving, active):
            active = moving
            rows = active[owner].nonzero()[:, 0]
            sub, hook.owner = batch.select(rows), owner[rows]
    return per_edit.tolist()


# ---------------------------------------------------------------- the editor

class LocateEditor(ModelEditor):
    """A batch of edits per `apply` call (in the harness: all of them in batch mode, one case's in single and
    sequential modes, B at a time in sequential-batch mode); subclasses give the config and `solve`."""

    config_class = LocateConfig

    def __init__(self, loaded: LoadedModel, cfg: LocateConfig | None = None, home: Path | None = None,
                 batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.home = home or Settings.from_env().home
        self.cfg = cfg or self.config_class()
        if self.cfg.traced:
            self.cfg = replace(self.cfg, layers=saved_layers(loaded, self.home, len(self.cfg.layers)))
        count = len(decoder_layers(loaded.model))
        if not self.cfg.layers or any(not 0 <= layer < count for layer in self.cfg.layers):
            raise ConfigError(f"{self.name}: layers {list(self.cfg.layers)} out of range for {count} layers")
        if list(self.cfg.layers) != sorted(set(self.cfg.layers)):
            raise ConfigError(f"{self.name}: layers must be distinct and increasing, got {list(self.cfg.layers)}")
        self.backup = WeightBackup()
        self.log: list[BatchLog] = []
        self._prefixes: list[str] | None = None
        self._covariances: dict[int, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: LocateConfig | None = None,
                    batch_size: int = 16) -> LocateEditor:
        return cls(loaded, config, settings.home, batch_size)

    @property
    def prefixes(self) -> list[str]:
        if self._prefixes is None:
            self._prefixes = sample_prefixes(self.loaded, self.cfg.prefixes, self.cfg.prefix_tokens)
        return self._prefixes

    @property
    def covariances(self) -> dict[int, torch.Tensor]:
        if self._covariances is None:
            self._covariances = layer_covariances(self.loaded, self.cfg.layers, self.cfg.corpus, self.cfg.cov_tokens,
                                                  self.cfg.seed, self.home)
        return self._covariances

    def solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """ΔW (d × f, float64) for keys K (f × n) and residuals R (d × n), both float64."""
        raise NotImplementedError

    def write(self, layer: int, update: torch.Tensor) -> None:
        """Put ΔW into the model: W += ΔW in place (CoachHooK writes into its hook copy instead)."""
        projection = mlp_projection(self.loaded.model, layer)
        self.backup.save(projection.weight)
        projection.add_matrix(update)

    def after_batch(self, edits: Sequence[Edit]) -> None:
        """Hook for methods that remember earlier batches (AlphaEdit's accumulated keys)."""

    def apply(self, edits: Sequence[Edit]) -> None:
        if edits:
            self.log.append(self.edit_batch(list(edits)))

    def edit_batch(self, edits: list[Edit]) -> BatchLog:
        if self.cfg.cache_targets and not self.log:  # the model is still unedited: a cached target holds
            targets, nlls = unedited_targets(self.loaded, edits, self.prefixes, self.cfg, self.home)
        else:
            targets, nlls = target_residuals(self.loaded, edits, self.prefixes, self.cfg)
        entry = BatchLog(len(edits), sum(nlls) / len(nlls))
        for done, layer in enumerate(self.cfg.layers):
            keys = layer_keys(self.loaded, layer, edits, self.prefixes).double().T
            current = residuals_at(self.loaded, self.cfg.layers[-1], edits)
            residual = ((targets - current) / (len(self.cfg.layers) - done)).double().T
            update = self.solve(layer, keys, residual)
            self.write(layer, update)
            entry.update_norm[layer] = round(float(update.norm()), 4)
            entry.update_rank[layer] = int(torch.linalg.matrix_rank(update.float()))
        self.after_batch(edits)
        log.info("%s: %d edits, target NLL %.3f, ‖ΔW‖ per layer %s", self.name, len(edits), entry.z_nll,
                 entry.update_norm)
        return entry

    def stats(self) -> dict:
        layers = {"layers": list(self.cfg.layers)}  # as edited: `traced` replaces the configured ones
        if not self.log:
            return layers
        return layers | {"batches": len(self.log), "z_nll": round(sum(b.z_nll for b in self.log) / len(self.log), 4),
                         "max_update_rank": max(max(b.update_rank.values()) for b in self.log)}

    def restore(self) -> None:
        self.backup.restore()
        self.log = []
