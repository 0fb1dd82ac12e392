"""Causal tracing (Meng et al., 2022): where in the network a model recalls a fact.

For a prompt that names a subject and the token the model predicts next (the answer):
1. clean      the answer's probability P[r] on the prompt as it is;
2. corrupt    Gaussian noise (ν·σ, σ the spread of subject-token embeddings: `noise_scale`) is added to the input
              embeddings of the subject's tokens, giving P*[r] averaged over `samples` draws;
3. restore    one state at a time is set back to its clean value inside a corrupted run: the residual stream after
              block l at token t (kind "hidden"), or the MLP's or the attention's output at token t in a window of
              layers centred on l (kinds "mlp", "attn", as the reference traces them); P*,restored[r] is read.
Total effect TE = P[r] − P*[r]; indirect effect IE = P*,restored[r] − P*[r]; averaged over facts it is the AIE per
(token, layer). Every restore of one fact runs in a few batched forwards: row 0 of each batch is the clean run the
restored states are copied from, every other row is a corrupted run with one job's states restored, and a noise draw
is shared by all jobs, so restoring every state recovers P[r] exactly and restoring none gives P*[r].

States before the first corrupted token are the same in clean and corrupted runs (attention only looks back), so
their effect is exactly zero: they are not run, and their cells hold P*[r].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lte_data import data_path
from torch import nn

from baselines.common import decoder_layers, subject_spans
from baselines.statistics import trace_path
from lte.core import prompting
from lte.core.errors import ConfigError, EditorUnavailableError
from lte.core.models import LoadedModel
from lte.core.scoring import kept_logits

KINDS = ("hidden", "mlp", "attn")


@dataclass(frozen=True)
class TraceConfig:
    """samples: noise draws per fact (the reference: 10). noise: the noise's standard deviation as a multiple of σ
    (the reference: 3σ, σ over subject-token embeddings). window: layers restored together for the mlp and attn
    kinds (the reference: 10; a single layer's MLP restores too little to show). chat: trace the prompt as the
    editors render it (chat template, the subject corrupted wherever it occurs); by default the bare prompt, as the
    reference does. rows: corrupted runs per forward (memory grows with it). seed: the noise draws."""

    samples: int = 10
    noise: float = 3.0
    window: int = 10
    chat: bool = False
    rows: int = 512
    seed: int = 1

    def __post_init__(self):
        if self.samples < 1 or self.window < 1 or self.rows < 1:
            raise ConfigError("trace: samples, window and rows must be at least 1")


@dataclass
class FactTrace:
    """One fact's trace: `scores[i, l]` is P*,restored[answer] for the state at token `positions[i]`, layer l."""

    prompt: str
    subject: str
    answer: str
    kind: str
    tokens: list[str]
    subject_range: tuple[int, int]
    positions: list[int]
    clean: float
    corrupted: float
    scores: np.ndarray = field(repr=False)

    @property
    def total_effect(self) -> float:
        return self.clean - self.corrupted

    def indirect_effects(self) -> np.ndarray:
        return self.scores - self.corrupted

    def strongest(self, count: int = 5) -> list[tuple[str, int, float]]:
        """The `count` (token, layer, IE) cells with the largest indirect effect."""
        effects = self.indirect_effects()
        order = np.argsort(effects, axis=None)[::-1][:count]
        return [(self.tokens[self.positions[i]], int(layer), float(effects[i, layer]))
                for i, layer in zip(*np.unravel_index(order, effects.shape))]

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "subject": self.subject, "answer": self.answer, "kind": self.kind,
                "tokens": self.tokens, "subject_range": list(self.subject_range), "positions": self.positions,
                "clean": self.clean, "corrupted": self.corrupted, "scores": self.scores.round(6).tolist()}


# ---------------------------------------------------------------- the model's parts

def layer_part(model: nn.Module, layer: int, kind: str) -> nn.Module:
    """The module whose output a trace of `kind` restores: the block, its MLP, or its attention."""
    block = decoder_layers(model)[layer]
    if kind == "hidden":
        return block
    names = ("mlp",) if kind == "mlp" else ("self_attn", "attn", "attention")
    for name in names:
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    raise EditorUnavailableError(f"layer {layer}: no {kind} module in {type(block).__name__}")


def window_layers(layer: int, window: int, count: int) -> range:
    """The layers restored together around `layer`: [layer − window//2, layer + ⌈window/2⌉), clipped."""
    return range(max(0, layer - window // 2), min(count, layer - (-window // 2)))


def noise_scale(loaded: LoadedModel) -> float:
    """σ: the standard deviation of the input embeddings of the tokens of the entity names lte ships
    (data/entities.json: people, companies, landmarks, countries, cities), the subjects a trace corrupts."""
    tables = json.loads(data_path("entities.json").read_text())
    names = [name for rows in tables.values() for name in rows]
    ids = sorted({i for name in names for i in loaded.tokenizer(" " + name, add_special_tokens=False)["input_ids"]})
    embeddings = loaded.model.get_input_embeddings()  # its output, as blocks see it (Gemma scales by √d)
    with torch.no_grad():
        return float(embeddings(torch.tensor([ids], device=loaded.model.device)).float().std())


# ---------------------------------------------------------------- one fact

@dataclass
class Prepared:
    """A prompt ready to trace: its token ids, the subject's corrupted spans, the answer and the noise draws."""

    text: str
    input_ids: torch.Tensor  # (1, T)
    spans: list[tuple[int, int]]
    answer_id: int
    clean: float
    noise: torch.Tensor  # (samples, T, d): zero outside the subject's spans

    @property
    def first_corrupted(self) -> int:
        return min(start for start, _ in self.spans)


def traced_text(tokenizer, prompt: str, cfg: TraceConfig) -> str:
    """The text a trace reads: the chat rendering, or the bare prompt behind the beginning-of-text token where the
    tokenizer puts one by default (Gemma-3-270M answers 1 of 1,209 known facts right without it; SmolLM2's
    tokenizer puts none)."""
    if cfg.chat:
        return prompting.render(tokenizer, prompt)
    bos = tokenizer.bos_token
    if bos and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id] and not prompt.startswith(bos):
        return bos + prompt
    return prompt


def prepare(loaded: LoadedModel, prompt: str, subject: str, cfg: TraceConfig, sigma: float,
            answer: str | None = None) -> Prepared:
    """Tokenise, find the subject, read the clean answer (the model's own next token, or the first token of
    `answer`) and its probability, and draw the noise."""
    tokenizer, model = loaded.tokenizer, loaded.model
    text = traced_text(tokenizer, prompt, cfg)
    spans = subject_spans(tokenizer, text, subject)
    if not cfg.chat:
        spans = spans[-1:]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad(), loaded.context():
        probs = torch.softmax(kept_logits(model, 1, input_ids=ids)[0, -1].float(), dim=-1)
    answer_id = (int(probs.argmax()) if answer is None
                 else tokenizer(answer, add_special_tokens=False)["input_ids"][0])
    generator = torch.Generator().manual_seed(cfg.seed)
    width = model.get_input_embeddings().weight.shape[1]
    noise = torch.zeros(cfg.samples, ids.shape[1], width)
    for start, stop in spans:
        noise[:, start:stop] = torch.randn(cfg.samples, stop - start, width, generator=generator)
    noise = (noise * cfg.noise * sigma).to(model.device, model.get_input_embeddings().weight.dtype)
    return Prepared(text, ids, spans, answer_id, float(probs[answer_id]), noise)


Job = Sequence[tuple[int, int]]  # the (layer, token) states one corrupted run restores


def restored_probabilities(loaded: LoadedModel, prepared: Prepared, jobs: Sequence[Job], kind: str,
                           cfg: TraceConfig) -> list[float]:
    """P*,restored[answer] for each job, averaged over the noise draws (an empty job: P*[answer])."""
    runs = [(j, s) for j in range(len(jobs)) for s in range(cfg.samples)]
    totals = np.zeros(len(jobs))
    for start in range(0, len(runs), cfg.rows):
        chunk = runs[start:start + cfg.rows]
        probs = _corrupted_forward(loaded, prepared, [jobs[j] for j, _ in chunk], [s for _, s in chunk], kind)
        np.add.at(totals, [j for j, _ in chunk], probs)
    return list(totals / cfg.samples)


def _corrupted_forward(loaded: LoadedModel, prepared: Prepared, jobs: Sequence[Job], draws: Sequence[int],
                       kind: str) -> np.ndarray:
    """One batch: row 0 clean, row i+1 corrupted by noise draw `draws[i]` with `jobs[i]` restored from row 0."""
    model = loaded.model
    rows = len(jobs) + 1
    handles = [model.get_input_embeddings().register_forward_hook(_add_noise(prepared.noise[list(draws)]))]
    restores: dict[int, tuple[list[int], list[int]]] = {}
    for row, job in enumerate(jobs, start=1):
        for layer, token in job:
            restores.setdefault(layer, ([], []))[0].append(row)
            restores[layer][1].append(token)
    for layer, (which_rows, tokens) in restores.items():
        handles.append(layer_part(model, layer, kind).register_forward_hook(_restore(which_rows, tokens)))
    try:
        with torch.no_grad(), loaded.context():
            logits = kept_logits(model, 1, input_ids=prepared.input_ids.expand(rows, -1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.softmax(logits[1:, -1].float(), dim=-1)[:, prepared.answer_id].cpu().numpy()


def _add_noise(noise: torch.Tensor):
    def hook(module, args, output):
        output = output.clone()
        output[1:] += noise
        return output
    return hook


def _restore(rows: list[int], tokens: list[int]):
    row_index, token_index = torch.tensor(rows), torch.tensor(tokens)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[row_index, token_index] = hidden[0, token_index]
        return output
    return hook


def trace_fact(loaded: LoadedModel, prompt: str, subject: str, kind: str = "hidden", cfg: TraceConfig | None = None,
               sigma: float | None = None, positions: Sequence[int] | None = None,
               answer: str | None = None) -> FactTrace:
    """The trace of one fact over every layer at `positions` (default: every token)."""
    if kind not in KINDS:
        raise ConfigError(f"trace: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cfg = cfg or TraceConfig()
    sigma = noise_scale(loaded) if sigma is None else sigma
    prepared = prepare(loaded, prompt, subject, cfg, sigma, answer)
    count = len(decoder_layers(loaded.model))
    length = prepared.input_ids.shape[1]
    positions = list(range(length)) if positions is None else list(positions)
    traced = sorted({t for t in positions if t >= prepared.first_corrupted})
    jobs: list[Job] = [[]]
    for token in traced:
        for layer in range(count):
            span = [layer] if kind == "hidden" else window_layers(layer, cfg.window, count)
            jobs.append([(inner, token) for inner in span])
    probs = restored_probabilities(loaded, prepared, jobs, kind, cfg)
    corrupted = probs[0]
    rows = {token: probs[1 + i * count:1 + (i + 1) * count] for i, token in enumerate(traced)}
    scores = np.array([rows.get(token, [corrupted] * count) for token in positions], dtype=float)
    tokens = [loaded.tokenizer.decode([i]) for i in prepared.input_ids[0].tolist()]
    first, last = prepared.spans[-1]
    return FactTrace(prompt, subject, loaded.tokenizer.decode([prepared.answer_id]), kind, tokens, (first, last),
                     positions, prepared.clean, corrupted, scores)


# ---------------------------------------------------------------- averages over facts

SUMMARY_POSITIONS = ("last subject token", "first subsequent token", "last token")


def summary_positions(fact_length: int, subject_range: tuple[int, int]) -> list[int]:
    """The token indexes the average reads: the subject's last token, the one after it, the prompt's last."""
    last_subject = subject_range[1] - 1
    return [last_subject, min(last_subject + 1, fact_length - 1), fact_length - 1]


def subject_range(loaded: LoadedModel, prompt: str, subject: str, cfg: TraceConfig) -> tuple[int, int, int]:
    """(first, stop, length) of the subject's last span in the traced text."""
    text = traced_text(loaded.tokenizer, prompt, cfg)
    start, stop = subject_spans(loaded.tokenizer, text, subject)[-1]
    return start, stop, len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])


def knows(loaded: LoadedModel, prompts: Sequence[str], answers: Sequence[str], cfg: TraceConfig) -> list[bool]:
    """Whether the model's next token after each prompt is the first token of its answer (" " + attribute)."""
    known = []
    for prompt, answer in zip(prompts, answers):
        text = traced_text(loaded.tokenizer, prompt, cfg)
        ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad(), loaded.context():
            top = int(kept_logits(loaded.model, 1, input_ids=ids.to(loaded.model.device))[0, -1].argmax())
        known.append(top == loaded.tokenizer(answer, add_special_tokens=False)["input_ids"][0])
    return known


def average_effects(traces: Sequence[FactTrace]) -> dict:
    """AIE per (summary position, layer), the average total effect and the facts counted, for one kind."""
    effects = np.stack([t.indirect_effects() for t in traces])
    return {"facts": len(traces), "positions": list(SUMMARY_POSITIONS),
            "aie": effects.mean(axis=0).round(6).tolist(),
            "ate": float(np.mean([t.total_effect for t in traces])),
            "clean": float(np.mean([t.clean for t in traces])),
            "corrupted": float(np.mean([t.corrupted for t in traces]))}


def traced_layers(summary: dict, count: int) -> tuple[int, ...]:
    """The `count` consecutive layers with the largest summed MLP AIE at the subject's last token (one layer: the
    peak, ROME's choice; several: the window a MEMIT-style editor spreads its update over)."""
    aie = np.asarray(summary["kinds"]["mlp"]["aie"])[SUMMARY_POSITIONS.index("last subject token")]
    if not 1 <= count <= len(aie):
        raise ConfigError(f"traced layers: cannot choose {count} of {len(aie)} layers")
    sums = np.convolve(aie, np.ones(count), mode="valid")
    start = int(sums.argmax())
    return tuple(range(start, start + count))


def saved_layers(loaded: LoadedModel, home: Path, count: int) -> tuple[int, ...]:
    """`traced_layers` from the summary `lte trace --dataset ... --save` kept for this model."""
    path = trace_path(loaded, home)
    if not path.is_file():
        raise ConfigError(f"traced=true: no causal trace is saved for {loaded.name}; run `lte --model "
                          f"{loaded.spec} trace --dataset known_1000 --save` first (or set the layers)")
    return traced_layers(json.loads(path.read_text()), count)
