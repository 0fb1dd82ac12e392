"""Helpers the parameter-editing baselines share: finding layers and MLP projections across architectures, locating
the subject's last token, building teacher-forced batches, and exact weight backup/restore."""

from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lte.core import prompting
from lte.core.errors import EditorUnavailableError, InputError
from lte.core.scoring import kept_logits, target_ids


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks of a decoder-only model (Llama-family `model.layers`, GPT-2 `transformer.h`)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise EditorUnavailableError(f"{type(model).__name__}: cannot find the decoder layers")


@dataclass(frozen=True)
class Projection:
    """The MLP output projection of one layer. `transposed`: GPT-2's Conv1D stores the weight as (in, out)."""

    module: nn.Module
    transposed: bool

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    def as_out_in(self) -> torch.Tensor:
        """The weight as a (out, in) matrix view, whatever the layout."""
        return self.weight.T if self.transposed else self.weight

    def add_rank_one(self, out_vector: torch.Tensor, in_vector: torch.Tensor) -> None:
        """W += out ⊗ in, in the module's own layout."""
        with torch.no_grad():
            update = torch.outer(out_vector, in_vector).to(self.weight.dtype)
            self.weight.add_(update.T if self.transposed else update)

    def add_matrix(self, update: torch.Tensor) -> None:
        """W += ΔW for a (out, in) matrix ΔW (e.g. solved in float64), in the module's own layout and dtype."""
        with torch.no_grad():
            update = update.to(self.weight.dtype)
            self.weight.add_(update.T if self.transposed else update)


def mlp_projection(model: PreTrainedModel, layer: int) -> Projection:
    mlp = decoder_layers(model)[layer].mlp
    if hasattr(mlp, "down_proj"):
        return Projection(mlp.down_proj, transposed=False)
    if hasattr(mlp, "c_proj"):
        return Projection(mlp.c_proj, transposed=True)
    if hasattr(mlp, "dense_4h_to_h"):
        return Projection(mlp.dense_4h_to_h, transposed=False)
    raise EditorUnavailableError(f"layer {layer}: MLP has no down_proj / c_proj")


def subject_spans(tokenizer: PreTrainedTokenizerBase, text: str, subject: str) -> list[tuple[int, int]]:
    """Every occurrence of the subject in `text` as a token range [first, stop), in order."""
    matches = list(re.finditer(re.escape(subject.strip()), text, flags=re.IGNORECASE))
    if not subject.strip() or not matches:
        raise InputError(f"subject '{subject}' does not occur in the prompt {text[-120:]!r}")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans = []
    for match in matches:
        covering = [i for i, (start, stop) in enumerate(offsets) if start < match.end() and stop > match.start()]
        if not covering:
            raise InputError(f"subject '{subject}': no token covers it in {text[-120:]!r}")
        spans.append((covering[0], covering[-1] + 1))
    return spans


def subject_last_token(tokenizer: PreTrainedTokenizerBase, text: str, subject: str) -> int:
    """Index of the token holding the last character of the subject's last occurrence in `text`."""
    return subject_spans(tokenizer, text, subject)[-1][1] - 1


@dataclass
class TargetBatch:
    """Right-padded prompt+target sequences with the positions that predict each target token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_positions: list[list[int]]
    target_tokens: list[list[int]]

    def target_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean log-probability of each row's target tokens (a vector, one value per row). Normalises only at the
        target positions and reads them with one gather: indexing row by row made the backward pass allocate and
        zero a full-vocabulary gradient per row."""
        rows, positions, tokens = (torch.tensor(x, device=logits.device) for x in self.flat_targets())
        picked = logits[rows, positions].float()  # (target tokens, vocabulary)
        token_logprobs = picked.gather(-1, tokens[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)
        sums = torch.zeros(len(self.target_tokens), device=logits.device).index_add(0, rows, token_logprobs)
        counts = torch.tensor([len(t) for t in self.target_tokens], device=logits.device)
        return sums / counts

    def flat_targets(self) -> tuple[list[int], list[int], list[int]]:
        """(row, position, token) of every target token, rows in order."""
        rows, positions, tokens = [], [], []
        for row, (row_positions, row_tokens) in enumerate(zip(self.target_positions, self.target_tokens)):
            rows += [row] * len(row_tokens)
            positions += row_positions
            tokens += row_tokens
        return rows, positions, tokens


def target_batch(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], targets: Sequence[str],
                 device: torch.device) -> TargetBatch:
    """Prompts are rendered texts; targets are already shaped by `prompting.format_target`."""
    pairs = [target_ids(tokenizer, p, t) for p, t in zip(prompts, targets)]
    width = max(len(p) + len(t) for p, t in pairs)
    pad = tokenizer.pad_token_id
    ids = [p + t + [pad] * (width - len(p) - len(t)) for p, t in pairs]
    mask = [[1] * (len(p) + len(t)) + [0] * (width - len(p) - len(t)) for p, t in pairs]
    positions = [list(range(len(p) - 1, len(p) + len(t) - 1)) for p, t in pairs]
    return TargetBatch(torch.tensor(ids, device=device), torch.tensor(mask, device=device), positions,
                       [t for _, t in pairs])


@dataclass
class PrefixCachedBatch:
    """Teacher-forced rows split at a pivot token per row. The tokens before each pivot run once, without gradients,
    and only their attention keys/values are kept; every optimisation step then runs just the pivot and the tokens
    after it. Exact when what is optimised acts at the pivot or later (causal attention: earlier tokens never see
    it) — ROME's δ at the subject's last token, GRACE's values at the answer positions. On chat-rendered prompts
    that cuts each step from ~50 tokens per row to a handful.

    Position 0 of the suffix is each row's pivot. `logits` projects to the vocabulary only at `kept` suffix
    positions (those predicting some row's target): `target` indexes into them."""

    prefix_cache: object  # a transformers Cache, or None when no row has a prefix
    suffix_ids: torch.Tensor
    attention_mask: torch.Tensor  # prefix (left-padded) and suffix (right-padded) together
    position_ids: torch.Tensor
    kept: torch.Tensor
    target: TargetBatch

    def logits(self, model: PreTrainedModel) -> torch.Tensor:
        inputs = dict(input_ids=self.suffix_ids, attention_mask=self.attention_mask, position_ids=self.position_ids)
        if self.prefix_cache is not None:  # the forward appends to the cache: each step starts from a copy
            inputs.update({cache_keyword(model): copy.deepcopy(self.prefix_cache), "use_cache": True})
        return kept_logits(model, self.kept, **inputs)

    def select(self, rows: torch.Tensor) -> PrefixCachedBatch:
        """The same batch restricted to `rows` (e.g. the edits still optimising)."""
        cache = copy.deepcopy(self.prefix_cache)
        if hasattr(cache, "batch_select_indices"):
            cache.batch_select_indices(rows)
        elif cache is not None:  # transformers' tuple format: ((keys, values), ...) per layer
            cache = tuple(tuple(t[rows] for t in layer) for layer in cache)
        chosen = rows.tolist()
        target = self.target
        return PrefixCachedBatch(cache, self.suffix_ids[rows], self.attention_mask[rows], self.position_ids[rows],
                                 self.kept, TargetBatch(target.input_ids[rows], target.attention_mask[rows],
                                                        [target.target_positions[r] for r in chosen],
                                                        [target.target_tokens[r] for r in chosen]))


def cache_keyword(model: PreTrainedModel) -> str:
    """The name a model's forward takes a key/value cache by: `cache` in recent transformers, `past_key_values`
    before (still accepted there, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefix_cached_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                        targets: Sequence[str], pivots: Sequence[int]) -> PrefixCachedBatch:
    """Rendered prompts with their targets (as for `target_batch`), split before `pivots` (token indices)."""
    device = model.device
    pairs = [target_ids(tokenizer, p, t) for p, t in zip(prompts, targets)]
    rows = [p + t for p, t in pairs]
    prefixes, suffixes = [r[:pivot] for r, pivot in zip(rows, pivots)], [r[pivot:] for r, pivot in zip(rows, pivots)]
    width_p, width_s = max(map(len, prefixes)), max(map(len, suffixes))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefix_mask = [[0] * (width_p - len(x)) + [1] * len(x) for x in prefixes]
    cache = None
    if width_p:
        prefix_ids = [[pad] * (width_p - len(x)) + x for x in prefixes]
        prefix_positions = [[0] * (width_p - len(x)) + list(range(len(x))) for x in prefixes]
        with torch.no_grad():
            output = model(input_ids=torch.tensor(prefix_ids, device=device),
                           attention_mask=torch.tensor(prefix_mask, device=device),
                           position_ids=torch.tensor(prefix_positions, device=device), use_cache=True)
            cache = output.get("cache", output.get("past_key_values"))
    suffix_ids = [x + [pad] * (width_s - len(x)) for x in suffixes]
    mask = [pm + [1] * len(x) + [0] * (width_s - len(x)) for pm, x in zip(prefix_mask, suffixes)]
    positions = [list(range(len(p), len(p) + width_s)) for p in prefixes]
    shifted = [[i - pivot for i in range(len(p) - 1, len(p) + len(t) - 1)] for (p, t), pivot in zip(pairs, pivots)]
    if any(i < 0 for row in shifted for i in row):
        raise ValueError("a pivot lies after the first target position")
    kept = sorted({i for row in shifted for i in row})
    indexed = [[kept.index(i) for i in row] for row in shifted]
    tensor = functools.partial(torch.tensor, device=device)
    return PrefixCachedBatch(cache, tensor(suffix_ids), tensor(mask), tensor(positions), tensor(kept),
                             TargetBatch(tensor(suffix_ids), tensor(mask)[:, width_p:], indexed, [t for _, t in pairs]))


def rendered(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], target: str) -> tuple[list[str], list[str]]:
    """Render cloze/question prompts exactly as the harness does, with the target shaped to follow each."""
    texts = [prompting.render(tokenizer, p) for p in prompts]
    return texts, [prompting.format_target(p, target) for p in prompts]


def pair_batch(loaded, pairs: Sequence[tuple[str, str]]) -> TargetBatch:
    """A teacher-forced batch of (prompt, target) pairs, each prompt rendered as the harness renders it."""
    texts, targets = [], []
    for prompt, target in pairs:
        text, shaped = rendered(loaded.tokenizer, [prompt], target)
        texts += text
        targets += shaped
    return target_batch(loaded.tokenizer, texts, targets, loaded.model.device)


def batch_logits(loaded, batch: TargetBatch, overrides: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Logits with `overrides` replacing weights functionally (W + ΔW while a learned editor trains)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    return functional_call(loaded.model, overrides or {}, args=(), kwargs=inputs).logits


def target_nll(loaded, pairs: Sequence[tuple[str, str]], overrides: dict[str, torch.Tensor] | None = None,
               chunk: int = 64) -> torch.Tensor:
    """Mean over (prompt, target) pairs of the target's NLL, in chunks of `chunk` rows; the graph is kept, so
    `backward` reaches whatever requires a gradient (FT-L's weights, a hypernetwork through `overrides`)."""
    losses = []
    for start in range(0, len(pairs), chunk):
        batch = pair_batch(loaded, pairs[start:start + chunk])
        losses.append(-batch.target_logprobs(batch_logits(loaded, batch, overrides)))
    return torch.cat(losses).mean()


def gradient_factors(loaded, pairs: Sequence[tuple[str, str]], weights: dict[str, nn.Parameter]
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each named (out × in) weight of a linear layer: its inputs u (tokens × in) and the gradients δ of the
    pairs' mean target NLL at its outputs (tokens × out), over every unpadded token, so that ∇W = δᵀu (rank ≤ the
    number of tokens). Read in one forward and one backward; MEND edits through these factors."""
    modules = {name: module for name, module in loaded.model.named_modules()
               if getattr(module, "weight", None) is not None and f"{name}.weight" in weights}
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: captured.__setitem__(name, (args[0], out)))
             for name, module in modules.items()]
    batch = pair_batch(loaded, pairs)
    try:
        with frozen_parameters(loaded.model, trainable=weights.values()), torch.enable_grad():
            loss = -batch.target_logprobs(batch_logits(loaded, batch)).mean()
            names = list(captured)
            deltas = torch.autograd.grad(loss, [captured[n][1] for n in names])
    finally:
        for hook in hooks:
            hook.remove()
    mask = batch.attention_mask.bool()
    return {f"{n}.weight": (captured[n][0][mask].detach(), d[mask].detach()) for n, d in zip(names, deltas)}


class frozen_parameters:
    """Context manager: no gradients for the model's own parameters while an edit's vector is optimised, except
    for `trainable` ones (e.g. the matrices whose gradient KE reads). Every flag is put back on exit."""

    def __init__(self, model: nn.Module, trainable: Sequence[nn.Parameter] = ()):
        self.model, self.trainable = model, list(trainable)

    def __enter__(self) -> None:
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)
        for p in self.trainable:
            p.requires_grad_(True)

    def __exit__(self, *exc) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)


class WeightBackup:
    """Copies of parameters taken before their first change; `restore` puts them back bit for bit."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}

    def save(self, parameter: nn.Parameter) -> None:
        if id(parameter) not in self._saved:
            self._saved[id(parameter)] = (parameter, parameter.detach().clone())

    def original(self, parameter: nn.Parameter) -> torch.Tensor:
        """The saved copy of a parameter (saved first)."""
        return self._saved[id(parameter)][1]

    def restore(self) -> None:
        with torch.no_grad():
            for parameter, original in self._saved.values():
                parameter.copy_(original)
        self._saved.clear()

    def __bool__(self) -> bool:
        return bool(self._saved)


class ForwardInputs:
    """Records the token ids and attention mask of the forward pass being run (a pre-hook on the whole model), so
    that hooks deeper in the model can leave padding out of per-sequence statistics or find tokens by id. With a
    key/value cache (generation, prefix-cached batches) the mask covers the cached tokens too: `mask` returns the
    columns of the tokens being run."""

    def __init__(self, model: nn.Module):
        self.input_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        self.handle = model.register_forward_pre_hook(self._read, with_kwargs=True)

    def _read(self, module, args, kwargs) -> None:
        self.input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.attention_mask = kwargs.get("attention_mask")

    def mask(self, rows: int, tokens: int, device: torch.device) -> torch.Tensor:
        """(rows × tokens) bool: True for real tokens of the forward being run."""
        mask = self.attention_mask
        if mask is None or mask.dim() != 2 or mask.shape[0] != rows or mask.shape[1] < tokens:
            return torch.ones(rows, tokens, dtype=torch.bool, device=device)
        return mask[:, -tokens:].bool().to(device)

    def remove(self) -> None:
        self.handle.remove()
