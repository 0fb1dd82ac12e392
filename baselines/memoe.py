"""MEMoE-style editing (after Wang & Li, 2024, "MEMoE: Enhancing Model Editing with Mixture of Experts Adaptors"): a
bypass mixture of low-rank experts beside one MLP output projection, trained on each batch of edits while every
weight of the model stays frozen, with "knowledge anchor" routing.

    h = W₀x + λ Σₑ Gₑ(x) Bₑ Aₑ x,    G = top_k(softmax(W_g · [x/‖x‖ ; w·a/‖a‖]))

x is the projection's input at a token, a the anchor: the mean input embedding of the named entity of the input, so
that questions about one subject share part of their router input and reach the same expert. No MEMoE code is
public; the choices the paper leaves open here are ours, hence "MEMoE-style":
- the named entity is found without an NER model: the longest subject of an edit applied so far whose tokens occur in
  the input; an input naming none takes the mean embedding of its own tokens (the anchor is fixed at a sequence's
  first forward and kept while generation continues it), or, with `unanchored="skip"`, reaches no expert;
- routing is per token (causal: a teacher-forced target never changes the routing of the prompt before it);
- experts are rank-r products Bₑ Aₑ with B zero-initialised (an untrained adaptor changes nothing);
- sequential batches (`batches`): MEMoE keeps training one adaptor, and later batches overwrite earlier ones
  (`"shared"`); by default each apply call trains a new adaptor and freezes the earlier ones, as LEMoE (Wang & Li,
  2024) does, and an input reaches the adaptor of the batch that edited its anchor subject (an unanchored input,
  routed, the adaptor whose subjects' anchors are nearest its own);
- per batch: Adam on the new adaptor for `steps`, loss = the edits' target NLL + `essence_weight` × KL to the
  unedited model over the unedited model's own answer to "Tell me about <subject>." (free text about an edited
  subject keeps its form; ROME's essence term reads one token, this reads `essence_tokens`) + with routed inputs,
  `retain_weight` × KL of the first answer token after neutral model-written prompts and after each edit prompt
  with another entity as its subject, and `silence_weight` × the adaptor's output energy on the neutral prompts.
The retain terms, the handling of unanchored inputs, the learning rate, where the adaptor acts and the training
prefixes were picked with a small sweep on training edits; the per-batch adaptors and the essence term are measured
on the 100-edit cells (results/memoe-sweep.txt). Layer 10 of 30 against 5 made no difference on 10 training edits;
4 experts, top-1 and rank 16 were not swept.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from baselines.common import (
    ForwardInputs,
    PrefixCachedBatch,
    decoder_layers,
    frozen_parameters,
    mlp_projection,
    prefix_cached_batch,
    rendered,
    subject_spans,
)
from baselines.corpus import entity_names
from baselines.locate import run_rows
from baselines.statistics import contexts, sample_prefixes
from lte.core import prompting
from lte.core.editor import ModelEditor
from lte.core.errors import ConfigError, InputError
from lte.core.models import LoadedModel
from lte.core.schema import Edit
from lte.core.scoring import ModelRunner, kept_logits
from lte.core.settings import Settings

log = logging.getLogger(__name__)

ESSENCE_QUESTION = "Tell me about {}."


@dataclass
class MEMoEConfig:
    """layer: the MLP output projection the adaptor sits beside. experts, top_k, rank: the mixture (the paper's
    single layer, a few experts, top-1; rank keeps each expert small). scale: λ above. anchor_weight: w above, how
    much the anchor counts against the token in routing. batches: "new-experts" (the default: a new adaptor per
    apply call, the earlier ones frozen, LEMoE) or "shared" (MEMoE: one adaptor trained on by every batch, which
    forgets: ten batches of 10 CounterFact edits kept 0.16 of them, results/memoe-sweep.txt). unanchored: what an
    input naming no edited subject gets — "route" (the paper: every input reaches an expert, its anchor being the
    mean of its own token embeddings) or "skip" (ours, the default: no expert, the model's own output; routed, 10
    edits kept none of the neighbours' answers). act_on: the tokens of a row reaching an adaptor that it acts on —
    "all" (the paper) or "subject" (only the anchor subject's tokens, and nothing an anchored row generates, as ROME's
    edit sits at the subject; training then caches every row's tokens before its subject: on 30 training edits it
    generalized less, 0.33 against 0.57). steps, lr: Adam per batch of edits (20 at 2e-2: on 10 training edits
    4e-3 left the target NLL at 3.7 and reliability 0.30, 2e-2 reached 0.05 and 0.90, 5e-2 generalized less).
    prefixes, prefix_tokens: model-written sentences put before each edit prompt in training (none: four of 10
    tokens cost four times as much and changed 10 training edits' generalization by nothing). essence_weight,
    essence_tokens, essence_rows: the KL over the unedited model's answer to
    "Tell me about <subject>." (its first `essence_tokens` tokens, for at most `essence_rows` edits of a batch).
    retain_weight: with routed inputs, KL to the unedited model of the first answer token after neutral prompts and
    after the edit prompts with another subject; silence_weight: the adaptor's output energy on the neutral
    prompts' tokens relative to the projection's own (a forward that stops at the layer); retain_texts,
    retain_tokens: those prompts (model-written sentences, 8 openings × 24 tokens). seed: the initialisation and
    the substituted subjects."""

    layer: int = 10
    experts: int = 4
    top_k: int = 1
    rank: int = 16
    scale: float = 1.0
    anchor_weight: float = 2.0
    batches: str = "new-experts"
    unanchored: str = "skip"
    act_on: str = "all"
    steps: int = 20
    lr: float = 2e-2
    prefixes: int = 0
    prefix_tokens: int = 10
    essence_weight: float = 1.0
    essence_tokens: int = 12
    essence_rows: int = 16
    retain_weight: float = 1.0
    silence_weight: float = 1.0
    retain_texts: int = 8
    retain_tokens: int = 24
    seed: int = 0

    def __post_init__(self):
        if self.unanchored not in ("route", "skip"):
            raise ValueError(f"unanchored must be 'route' or 'skip', got {self.unanchored!r}")
        if self.act_on not in ("all", "subject"):
            raise ValueError(f"act_on must be 'all' or 'subject', got {self.act_on!r}")
        if self.batches not in ("new-experts", "shared"):
            raise ValueError(f"batches must be 'new-experts' or 'shared', got {self.batches!r}")


class MoEAdaptor(nn.Module):
    """The experts and the router of one projection: `forward(x, anchor)` is λ Σ Gₑ Bₑ Aₑ x for inputs x
    (rows × tokens × f) and one anchor per row (rows × e)."""

    def __init__(self, in_dim: int, out_dim: int, anchor_dim: int, cfg: MEMoEConfig, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.down = nn.Parameter(torch.randn(cfg.experts, in_dim, cfg.rank, generator=generator) / in_dim ** 0.5)
        self.up = nn.Parameter(torch.zeros(cfg.experts, cfg.rank, out_dim))
        self.router = nn.Linear(in_dim + anchor_dim, cfg.experts, bias=False)
        with torch.no_grad():
            self.router.weight.copy_(torch.randn(self.router.weight.shape, generator=generator)
                                     / (in_dim + anchor_dim) ** 0.5)

    def gates(self, x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """(rows × tokens × experts): softmax router weights, zero outside each token's top_k."""
        anchor = self.cfg.anchor_weight * nn.functional.normalize(anchor, dim=-1)
        features = torch.cat([nn.functional.normalize(x, dim=-1), anchor[:, None].expand(*x.shape[:2], -1)], -1)
        weights = torch.softmax(self.router(features), -1)
        top = weights.topk(self.cfg.top_k, dim=-1).indices
        return weights * torch.zeros_like(weights).scatter(-1, top, 1.0)

    def forward(self, x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """In the adaptor's float32 (Adam's small steps survive), returned in the model's dtype."""
        dtype, x, anchor = x.dtype, x.to(self.up.dtype), anchor.to(self.up.dtype)
        gates = self.gates(x, anchor)
        outputs = torch.einsum("btf,efr,ero->bteo", x, self.down, self.up)  # every expert; E and r are small
        return (self.cfg.scale * (gates.unsqueeze(-1) * outputs).sum(2)).to(dtype)


def find_span(ids: Sequence[int], pattern: Sequence[int]) -> int:
    """Start of the last occurrence of `pattern` in `ids`, or −1 (a string search: it runs at every forward)."""
    text, wanted = "," + ",".join(map(str, ids)) + ",", "," + ",".join(map(str, pattern)) + ","
    at = text.rfind(wanted)
    return -1 if at < 0 else text.count(",", 0, at)


class Anchors:
    """The anchor of every row of the forward being run — the mean input embedding of the longest known subject in
    the row's tokens, else of all its real tokens — and the adaptor the row reaches: the one that owns that subject,
    else (routed) the one whose subjects' anchors are nearest, else none (−1). Set at a sequence's first forward (a
    pre-hook on the model); a forward that continues a cache (generation) keeps them. While an adaptor trains,
    `training` sends every unanchored row to it."""

    def __init__(self, loaded: LoadedModel, route_unanchored: bool, subject_only: bool = False):
        self.loaded, self.route_unanchored, self.subject_only = loaded, route_unanchored, subject_only
        self.inputs = ForwardInputs(loaded.model)
        self.owner: dict[tuple[int, ...], int] = {}  # token ids of a subject form → the adaptor that edited it
        self.subjects: list[tuple[int, ...]] = []  # the forms, longest first
        self.keys: list[torch.Tensor] = []  # per adaptor: its subjects' anchors, normalised (subjects × e)
        self.training: int | None = None
        self.current: torch.Tensor | None = None
        self.reach: torch.Tensor | None = None  # per row: the adaptor's index, or −1
        self.anchored: torch.Tensor | None = None  # per row: whether a known subject named it
        self.where: torch.Tensor | None = None  # (rows × tokens) of the forward being run: where the adaptor acts
        self.handle = loaded.model.register_forward_pre_hook(self._find, with_kwargs=True)

    def add_subjects(self, subjects: Sequence[str], adaptor: int) -> None:
        tokenizer, embed = self.loaded.tokenizer, self.loaded.model.get_input_embeddings()
        forms = {tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) for s in subjects
                 for text in (s, " " + s)} - {()}
        self.owner.update({form: adaptor for form in forms})
        self.subjects = sorted(self.owner, key=len, reverse=True)
        device = embed.weight.device
        with torch.no_grad():
            keys = torch.stack([embed(torch.tensor(f, device=device)).mean(0) for f in sorted(forms)])
        keys = nn.functional.normalize(keys.float(), dim=-1)
        if adaptor < len(self.keys):
            self.keys[adaptor] = torch.cat([self.keys[adaptor], keys])
        else:
            self.keys.append(keys)

    def nearest(self, anchor: torch.Tensor) -> int:
        """The adaptor whose subjects' anchors are nearest (cosine) to an unanchored row's own."""
        anchor = nn.functional.normalize(anchor.float(), dim=-1)
        return int(torch.stack([(keys @ anchor).max() for keys in self.keys]).argmax())

    def _find(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        position = kwargs.get("cache_position")
        continuing = position is not None and position.numel() and int(position[0]) > 0
        if ids is None:
            return
        if continuing and self.current is not None and self.current.shape[0] == ids.shape[0]:
            self.where = self._continued(ids.shape[1])
            return
        mask = self.inputs.mask(ids.shape[0], ids.shape[1], ids.device)
        embeddings = self.loaded.model.get_input_embeddings()(ids).detach()
        anchors, reach, anchored = [], [], []
        self.where = mask.clone() if not self.subject_only else torch.zeros_like(mask)
        for row in range(ids.shape[0]):
            columns = mask[row].nonzero()[:, 0]
            tokens, chosen = ids[row][columns].tolist(), embeddings[row][columns]
            anchor, owner, span = chosen.mean(0), -1, None
            for subject in self.subjects:  # longest first
                start = find_span(tokens, subject)
                if start >= 0:
                    anchor, owner, span = chosen[start:start + len(subject)].mean(0), self.owner[subject], subject
                    break
            if owner < 0 and self.route_unanchored and self.keys:
                owner = self.training if self.training is not None else self.nearest(anchor)
            if self.subject_only:
                self.where[row] = self._subject_columns(tokens, span, columns, ids.shape[1]) if span else mask[row]
            anchors.append(anchor)
            reach.append(owner)
            anchored.append(span is not None)
        self.current, self.reach = torch.stack(anchors), torch.tensor(reach, device=ids.device)
        self.anchored = torch.tensor(anchored, device=ids.device)

    @staticmethod
    def _subject_columns(tokens: list[int], subject: Sequence[int], columns: torch.Tensor, width: int) -> torch.Tensor:
        """(width,) bool: the columns of every occurrence of the subject's tokens in a row."""
        where = torch.zeros(width, dtype=torch.bool, device=columns.device)
        start = find_span(tokens, subject)
        while start >= 0:
            where[columns[start:start + len(subject)]] = True
            start = find_span(tokens[:start], subject)
        return where

    def _continued(self, tokens: int) -> torch.Tensor:
        """Where the adaptor acts on tokens that continue a cached sequence: everywhere, or (subject_only) only on
        unanchored rows — an anchored row's subject lies in the cache."""
        rows = self.current.shape[0]
        where = torch.ones(rows, tokens, dtype=torch.bool, device=self.reach.device)
        if self.subject_only:
            where &= ~self.anchored[:, None]
        return where

    def restart(self) -> None:
        """The next forward starts new sequences even if it continues a cache (a prefix-cached batch)."""
        self.current = None

    def remove(self) -> None:
        self.handle.remove()
        self.inputs.remove()


def swapped_prompts(edits: Sequence[Edit], seed: int) -> list[str]:
    """Each edit prompt with another entity lte ships (data/entities.json) as its subject: the same relation about
    another subject, which the edit must leave alone."""
    names, chooser = entity_names(), random.Random(seed)
    swapped = []
    for edit in edits:
        other = chooser.choice([n for n in names if n.lower() != edit.subject.lower()])
        swapped.append(edit.prompt.replace(edit.subject, other) if edit.subject in edit.prompt
                       else f"{other}: {edit.prompt}")
    return swapped


class MEMoEEditor(ModelEditor):
    """Each apply call trains an adaptor on that call's edits (one batch); `restore` removes them all: the model's
    own weights are never written."""

    name = "memoe"
    config_class = MEMoEConfig

    def __init__(self, loaded: LoadedModel, cfg: MEMoEConfig | None = None, batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.cfg = cfg or MEMoEConfig()
        count = len(decoder_layers(loaded.model))
        if not 0 <= self.cfg.layer < count:
            raise ConfigError(f"memoe: layer {self.cfg.layer} out of range for {count} layers")
        if not 1 <= self.cfg.top_k <= self.cfg.experts:
            raise ConfigError(f"memoe: top_k must be between 1 and experts ({self.cfg.experts}), got {self.cfg.top_k}")
        self.adaptors = nn.ModuleList()
        self.anchors: Anchors | None = None
        self._handle = None
        self.active = True
        self._retain: tuple[list[str], torch.Tensor] | None = None
        self._prefixes: list[str] | None = None
        self.last_bypass: tuple[torch.Tensor, torch.Tensor] | None = None
        self.log: list[dict] = []

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: MEMoEConfig | None = None,
                    batch_size: int = 16) -> MEMoEEditor:
        return cls(loaded, config, batch_size)

    # ------------------------------------------------------------ the adaptors and their hook

    def next_adaptor(self) -> int:
        """The adaptor this batch trains: a new one (frozen when its batch ends), or the one shared adaptor."""
        projection = mlp_projection(self.loaded.model, self.cfg.layer)
        if self.anchors is None:
            self.anchors = Anchors(self.loaded, self.cfg.unanchored == "route", self.cfg.act_on == "subject")
            self._handle = projection.module.register_forward_hook(self.bypass)
        if self.cfg.batches == "shared" and len(self.adaptors):
            return 0
        out_dim, in_dim = projection.as_out_in().shape
        anchor_dim = self.loaded.model.get_input_embeddings().weight.shape[1]
        seed = self.cfg.seed + len(self.adaptors)
        self.adaptors.append(MoEAdaptor(in_dim, out_dim, anchor_dim, self.cfg, seed).to(projection.weight.device))
        return len(self.adaptors) - 1

    def bypass(self, module, args, output):
        """The projection's output plus, on each row, the output of the adaptor the row reaches (none: nothing
        added); the added part is kept in `last_bypass` (with its base output) for the silence loss."""
        added = torch.zeros_like(output)
        if self.active:
            reach = self.anchors.reach
            for index in sorted(set(reach.tolist()) - {-1}):
                rows = reach == index
                out = self.adaptors[index](args[0][rows], self.anchors.current[rows]).to(output.dtype)
                added[rows] = out * self.anchors.where[rows][..., None].to(out.dtype)
        self.last_bypass = (added, output)
        return output + added

    @contextmanager
    def unedited(self):
        """Context: the adaptors switched off (the unedited model's references)."""
        self.active = False
        try:
            yield
        finally:
            self.active = True

    # ------------------------------------------------------------ the loss terms

    def next_token_logprobs(self, texts: Sequence[str]) -> torch.Tensor:
        """(texts × vocabulary): the distribution of the token after each text (where an answer begins)."""
        batch = self.loaded.tokenizer(list(texts), add_special_tokens=False, padding=True, padding_side="left",
                                      return_tensors="pt").to(self.loaded.model.device)
        return torch.log_softmax(kept_logits(self.loaded.model, 1, **batch)[:, -1].float(), -1)

    def taught(self, prompts: Sequence[str], targets: Sequence[str], subjects: Sequence[str]) -> PrefixCachedBatch:
        """Rendered prompts and their targets as one teacher-forced batch. With `act_on="subject"` the tokens before
        each row's first subject token run once, here (the adaptor never acts on them), and every step runs only the
        rest: on chat-rendered prompts about half of each row."""
        pivots = [self.first_subject_token(p, s) if self.cfg.act_on == "subject" else 0
                  for p, s in zip(prompts, subjects)]
        with torch.no_grad(), self.unedited():
            return prefix_cached_batch(self.loaded.model, self.loaded.tokenizer, prompts, targets, pivots)

    def first_subject_token(self, text: str, subject: str) -> int:
        try:
            return subject_spans(self.loaded.tokenizer, text, subject)[0][0]
        except InputError:  # a prompt that does not spell its subject: no prefix to cache
            return 0

    def target_logprobs(self, batch: PrefixCachedBatch) -> torch.Tensor:
        """(rows,): each row's mean target log-probability."""
        self.anchors.restart()
        return batch.target.target_logprobs(batch.logits(self.loaded.model))

    def answer_logprobs(self, batch: PrefixCachedBatch) -> torch.Tensor:
        """(target tokens × vocabulary): the distributions that predict every row's target tokens, stacked."""
        if self.anchors is not None:
            self.anchors.restart()
        rows, positions, _ = (torch.tensor(x, device=self.loaded.model.device) for x in batch.target.flat_targets())
        return torch.log_softmax(batch.logits(self.loaded.model)[rows, positions].float(), -1)

    @staticmethod
    def kl(reference: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        """KL(unedited ‖ edited), averaged over rows of log-probabilities."""
        return (reference.exp() * (reference - edited)).sum(-1).mean()

    def essence_set(self, edits: Sequence[Edit]) -> tuple[PrefixCachedBatch, torch.Tensor]:
        """For (at most `essence_rows` of) the batch's subjects: the question "Tell me about <subject>." rendered,
        with the unedited model's own answer (`essence_tokens` tokens) as its target, and the unedited model's
        distributions over that answer."""
        step = max(1, -(-len(edits) // self.cfg.essence_rows))
        subjects = list(dict.fromkeys(e.subject for e in edits[::step]))
        prompts = [prompting.render(self.loaded.tokenizer, ESSENCE_QUESTION.format(s)) for s in subjects]
        with torch.no_grad(), self.unedited():
            answers = ModelRunner(self.loaded.model, self.loaded.tokenizer).generate(prompts, self.cfg.essence_tokens)
            batch = self.taught(prompts, answers, subjects)
            return batch, self.answer_logprobs(batch)

    def prefix_texts(self) -> list[str]:
        """Model-written sentences put before each edit prompt in training (ROME's and MEMIT's contexts), so that
        the edit also holds after text that precedes the question (computed once, before any edit)."""
        if self._prefixes is None:
            with torch.no_grad(), self.unedited():
                self._prefixes = (sample_prefixes(self.loaded, self.cfg.prefixes, self.cfg.prefix_tokens)
                                  if self.cfg.prefixes else [])
        return self._prefixes

    def retain_set(self) -> tuple[list[str], torch.Tensor]:
        """Neutral model-written sentences rendered as the harness renders a prompt (the form every scored question
        takes) and the unedited model's next-token log-probabilities after each (computed once, before any edit)."""
        if self._retain is None:
            texts = [prompting.render(self.loaded.tokenizer, text)
                     for text in sample_prefixes(self.loaded, self.cfg.retain_texts, self.cfg.retain_tokens)]
            with torch.no_grad(), self.unedited():
                self._retain = texts, self.next_token_logprobs(texts)
        return self._retain

    def swapped_set(self, edits: Sequence[Edit]) -> tuple[list[str], torch.Tensor]:
        """The batch's prompts about other subjects, rendered, and the unedited model's next-token distributions."""
        texts = [prompting.render(self.loaded.tokenizer, p)
                 for p in swapped_prompts(edits, self.cfg.seed + len(self.log))]
        with torch.no_grad(), self.unedited():
            return texts, self.next_token_logprobs(texts)

    def silence(self, texts: Sequence[str]) -> torch.Tensor:
        """The adaptor's output energy on all real tokens of `texts`, relative to the projection's own (a forward
        that stops at the layer)."""
        run_rows(self.loaded, texts, self.cfg.layer, grad=True)
        added, own = self.last_bypass
        mask = self.anchors.inputs.mask(added.shape[0], added.shape[1], added.device)
        return added[mask].pow(2).sum(-1).mean() / own[mask].pow(2).sum(-1).mean().detach()

    # ------------------------------------------------------------ one batch

    def apply(self, edits: Sequence[Edit]) -> None:
        if not edits:
            return
        routed = self.cfg.unanchored == "route"
        retain = self.retain_set() if routed else None
        swapped = self.swapped_set(edits) if routed else None
        index = self.next_adaptor()
        essence = self.essence_set(edits)
        self.anchors.add_subjects([e.subject for e in edits], index)
        adaptor = self.adaptors[index]
        for earlier, other in enumerate(self.adaptors):
            other.requires_grad_(earlier == index)
        taught = self.edit_batch(edits)
        optimizer = torch.optim.Adam(adaptor.parameters(), lr=self.cfg.lr)
        self.anchors.training = index
        try:
            with frozen_parameters(self.loaded.model), torch.enable_grad():
                for _ in range(self.cfg.steps):
                    terms = self.losses(taught, essence, retain, swapped)
                    optimizer.zero_grad()
                    sum(weight * value for weight, value in terms.values()).backward()
                    optimizer.step()
        finally:
            self.anchors.training = None
            adaptor.requires_grad_(False)
        entry = {"edits": len(edits), **{name: round(float(value.detach()), 5) for name, (_, value) in terms.items()}}
        self.log.append(entry)
        log.info("memoe: adaptor %d, %s", index, entry)

    def edit_batch(self, edits: Sequence[Edit]) -> PrefixCachedBatch:
        """Every edit prompt (alone and after each training prefix), rendered, with its new target."""
        prompts, targets, subjects = [], [], []
        for edit in edits:
            texts, shaped = rendered(self.loaded.tokenizer, contexts(edit, self.prefix_texts()), edit.target_new)
            prompts += texts
            targets += shaped
            subjects += [edit.subject] * len(texts)
        return self.taught(prompts, targets, subjects)

    def losses(self, taught, essence, retain, swapped) -> dict[str, tuple[float, torch.Tensor]]:
        """name → (weight, value) of every loss term of one step."""
        terms = {"nll": (1.0, -self.target_logprobs(taught).mean())}
        if self.cfg.essence_weight:
            batch, reference = essence
            terms["essence"] = (self.cfg.essence_weight, self.kl(reference, self.answer_logprobs(batch)))
        if retain is not None:
            (texts, reference), (other, other_reference) = retain, swapped
            kl = (self.kl(reference, self.next_token_logprobs(texts))
                  + self.kl(other_reference, self.next_token_logprobs(other))) / 2
            terms["kl"] = (self.cfg.retain_weight, kl)
            if self.cfg.silence_weight:
                terms["silence"] = (self.cfg.silence_weight, self.silence(texts))
        return terms

    # ------------------------------------------------------------ inspection and restore

    def route(self, prompts: Sequence[str]) -> list[tuple[int, int]]:
        """(adaptor, expert) that the last token of each prompt reaches (rendered as the harness renders it; the
        expert with the largest gate), (−1, −1) where it reaches none."""
        chosen: list[tuple[int, int]] = []

        def read(module, args, output):
            index = int(self.anchors.reach[0])
            expert = -1 if index < 0 else int(self.adaptors[index].gates(
                args[0], self.anchors.current)[0, -1].argmax())
            chosen.append((index, expert))

        hook = mlp_projection(self.loaded.model, self.cfg.layer).module.register_forward_hook(read)
        try:
            with torch.no_grad():
                for prompt in prompts:  # one at a time: the last token is the prompt's own
                    text = prompting.render(self.loaded.tokenizer, prompt)
                    batch = self.loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")
                    self.loaded.model(**batch.to(self.loaded.model.device))
        finally:
            hook.remove()
        return chosen

    def stats(self) -> dict:
        if not self.log:
            return {}
        last = {k: v for k, v in self.log[-1].items() if k != "edits"}
        return {"batches": len(self.log), "adaptors": len(self.adaptors), **last,
                "adaptor_parameters": sum(p.numel() for p in self.adaptors.parameters())}

    def restore(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self.anchors.remove()
        self.adaptors, self.anchors, self._handle, self.log = nn.ModuleList(), None, None, []
