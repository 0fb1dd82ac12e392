"""LTE phase 2: answer with retrieved edits in the prompt of the aligned model.

`apply` inserts edits into the EditStore; answering retrieves the top-k edits the scope model lets through, writes
them into the prompt (`lte.core.prompting`), and generates with the aligned model. A question with no relevant edit gets
no edit block at all, and — when the aligned model was fine-tuned from a base model we can load — is answered by
that unedited base model: unrelated questions then get exactly the answers they got before any edit, whatever the
fine-tuning shifted (measured: without this, the aligned default model's answers to CounterFact neighbour prompts
drift from the base's; see RESULTS.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from lte.core import prompting
from lte.core.editor import ModelEditor, Query
from lte.core.errors import ConfigError, InputFileError
from lte.core.models import LoadedModel, load_base
from lte.core.schema import Edit
from lte.core.scoring import ModelRunner, TargetScore
from lte.core.settings import Settings
from retrieval.gate import Gate
from retrieval.scope import META_FILE, ScopeModel, scope_beside
from retrieval.store import EditStore, Hit, open_client

GATE_FILE = "gate.json"  # written next to an aligned model by `lte align`


@dataclass
class LTEConfig:
    """k: most edits put into one prompt (3: a question rarely needs more, and each costs ~30 prompt tokens).
    hops: rounds of retrieval; 2 searches again with each first-round edit's new answer appended (multi-hop).
    scope: a scope model folder (`lte scope train`) deciding which candidates pass, instead of the store's own or,
    failing that, the one `lte align` trained next to the model; 'none' lets the relevance gate decide.
    gate: a relevance gate JSON (`lte edit calibrate --gate --save-to`): the gate decides, no scope model.
    route_unedited: questions with no relevant edit are answered by the base model the aligned one was fine-tuned
    from (their answers stay exactly the unedited ones)."""

    k: int = 3
    hops: int = 1
    scope: str | None = None
    gate: str | None = None
    route_unedited: bool = True

    def __post_init__(self) -> None:
        if self.hops not in (1, 2):
            raise ConfigError(f"hops={self.hops}: choose 1 or 2")
        if self.k < 1:
            raise ConfigError(f"k={self.k}: must be at least 1")


@dataclass(frozen=True)
class Answer:
    text: str
    hits: tuple[Hit, ...]


class LTEEditor(ModelEditor):
    """Retrieval-augmented in-context editing. `k`: most edits put into one prompt. `hops`: rounds of retrieval;
    with 2, the question is searched again with each new answer found in the first round appended, so an edit about
    that answer ('Croatia' → its head of state) joins the prompt (multi-hop questions, MQuAKE)."""

    name = "lte"
    config_class = LTEConfig

    def __init__(self, loaded: LoadedModel, store: EditStore, k: int = 3, batch_size: int = 16,
                 unedited: LoadedModel | None = None, hops: int = 1):
        super().__init__(loaded, batch_size)
        self.retrieval = EditRetrieval(store, loaded.tokenizer, k, hops)
        self.unedited = unedited
        self.unedited_runner = (ModelRunner(unedited.model, unedited.tokenizer, batch_size, unedited.context)
                                if unedited else None)
        self._added: list[str] = []
        self._superseded: list[str] = []

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: LTEConfig | None = None,
                    batch_size: int = 16, private_store: bool = True, gate: Gate | None = None) -> LTEEditor:
        """private_store: a fresh in-memory edit set (evaluation), never the user's store; otherwise the store
        named by the settings. gate: a `Gate` object, over config.gate (a path)."""
        config = config or LTEConfig()
        store = open_store(settings, config, private_store, gate)
        unedited = None
        if config.route_unedited and loaded.base_spec != loaded.spec:
            # an unmerged LoRA model is its own base with the adapter off; a fully fine-tuned one needs a copy
            unedited = (loaded.without_adapter() if loaded.has_adapter
                        else load_base(loaded, settings.home, **settings.load_options))
        editor = cls(loaded, store, config.k, batch_size, unedited, config.hops)
        editor.config = config
        return editor

    def runner_for(self, has_facts: bool) -> ModelRunner:
        """The routing, defined here only: the aligned model for prompts carrying edits; the unedited base (when
        routed) for the others."""
        return self.runner if has_facts or self.unedited_runner is None else self.unedited_runner

    def score(self, queries: Sequence[Query], targets: Sequence[str]) -> list[TargetScore]:
        facts = self.facts_for(queries)
        texts = [prompting.render(self.loaded.tokenizer, q.prompt, f) for q, f in zip(queries, facts)]
        shaped = [prompting.format_target(q.prompt, t) for q, t in zip(queries, targets)]
        return self._routed(facts, lambda runner, rows: runner.score([texts[i] for i in rows],
                                                                     [shaped[i] for i in rows]))

    def generate(self, queries: Sequence[Query], max_new_tokens: int) -> list[str]:
        facts = self.facts_for(queries)
        texts = [prompting.render(self.loaded.tokenizer, q.prompt, f) for q, f in zip(queries, facts)]
        return self._routed(facts, lambda runner, rows: runner.generate([texts[i] for i in rows], max_new_tokens))

    def _routed(self, facts: list[list[str]], call) -> list:
        """Run `call(runner, row_indices)` for the rows with facts on the aligned model and the others on the
        unedited one, and put the results back in order."""
        results: list = [None] * len(facts)
        for has_facts in (True, False):
            rows = [i for i, f in enumerate(facts) if bool(f) == has_facts]
            for i, result in zip(rows, call(self.runner_for(has_facts), rows) if rows else []):
                results[i] = result
        return results

    def stats(self) -> dict:
        """What decides which edits pass: the scope model (its weights' hash), or the relevance gate in use (from
        the store, from next to --model, or the unfitted one)."""
        scope = self.store.scope
        if scope is not None:
            return {"scope": {"model": scope.identity, "threshold": scope.threshold, "pairs": scope.info.pairs}}
        gate = self.store.gate
        return {"gate": {"weights": [round(w, 4) for w in gate.weights], "bias": round(gate.bias, 4),
                         "threshold": round(gate.threshold, 4), "fitted_on": gate.fit_related + gate.fit_unrelated}}

    def apply(self, edits: Sequence[Edit]) -> None:
        report = self.store.add(edits, progress=False)
        self._added += report.added_ids
        self._superseded += report.superseded_ids

    def restore(self) -> None:
        """Remove only the edits `apply` stored, and make current again the stored ones they superseded: edits
        that were in a user's store before stay as they were."""
        for edit_id in self._added:
            self.store.delete(edit_id)
        for edit_id in self._superseded:
            if self.store.get(edit_id) is not None:
                self.store.restore(edit_id)
        self._added, self._superseded = [], []

    @property
    def store(self) -> EditStore:
        return self.retrieval.store

    def retrieve(self, questions: Sequence[str]) -> list[list[Hit]]:
        return self.retrieval.retrieve(questions)

    def passed_edits(self, queries: Sequence[Query]) -> list[list[str]]:
        return [[hit.edit.id for hit in hits] for hits in self.retrieve([q.prompt for q in queries])]

    def facts_for(self, queries: Sequence[Query]) -> list[list[str]]:
        return [[hit.edit.statement for hit in hits] for hits in self.retrieve([q.prompt for q in queries])]

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> tuple[str, list[Hit]]:
        """A client's conversation (`lte serve`) as the text the model continues, with the edits retrieved for its
        last turn; generate it with `runner_for(bool(hits))`."""
        return self.retrieval.chat_prompt(messages)

    def answer(self, question: str, max_new_tokens: int = 64) -> Answer:
        """Answer one question; report which edits were used."""
        hits = self.retrieve([question])[0]
        prompt = prompting.render(self.loaded.tokenizer, question, [h.edit.statement for h in hits])
        text = self.runner_for(bool(hits)).generate([prompt], max_new_tokens)[0].strip()
        if prompting.is_cloze(question):  # show the completed sentence, not only its continuation
            text = f"{prompting.assistant_prefill(question)} {text}"
        return Answer(text, tuple(hits))


class EditRetrieval:
    """The retrieval half of LTE, which needs the store and the tokenizer but no model weights: the edits for a
    question (`hops` rounds, at most `k`) and the prompt they are written into. `lte serve --generator-url` runs only
    this half and forwards the prompt to a generation server."""

    def __init__(self, store: EditStore, tokenizer: PreTrainedTokenizerBase, k: int = 3, hops: int = 1):
        LTEConfig(k=k, hops=hops)  # the same checks as from --set
        self.store, self.tokenizer, self.k, self.hops = store, tokenizer, k, hops

    def retrieve(self, questions: Sequence[str]) -> list[list[Hit]]:
        first = self.store.search_many(questions, self.k)
        if self.hops == 1:
            return first
        chained = [(q, f"{questions[q]} {hit.edit.target_new}") for q, hits in enumerate(first) for hit in hits]
        second = self.store.search_many([text for _, text in chained], self.k) if chained else []
        merged = [list(hits) for hits in first]
        for (q, _), hits in zip(chained, second):
            for hit in hits:
                if all(hit.edit.id != known.edit.id for known in merged[q]):
                    merged[q].append(hit)
        return [hits[: self.k] for hits in merged]

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> tuple[str, list[Hit]]:
        hits = self.retrieve([messages[-1]["content"]])[0]
        return prompting.render_conversation(self.tokenizer, messages, [h.edit.statement for h in hits]), hits


def open_store(settings: Settings, config: LTEConfig, private_store: bool = False, gate: Gate | None = None
               ) -> EditStore:
    """private_store: a fresh in-memory edit set (evaluation), never the user's store; otherwise the store named by
    the settings. What decides which candidates pass, first found: an explicit gate (`gate`, else config.gate, a
    path); config.scope; the store's recorded scope model; the one `lte align` trained next to --model; and as the
    fallback the store's saved gate, else the gate `lte align` fitted next to --model, else the unfitted one (the
    same for `lte` and its unaligned ablation)."""
    gate = gate or (load_gate(config.gate) if config.gate else None)
    if private_store:
        store = EditStore(open_client(), f"eval-{uuid.uuid4().hex[:12]}", gate=gate)
    else:
        store = EditStore.open(settings.store_dir, settings.chroma_url, settings.collection,
                           records_url=settings.records_url, gate=gate)
    if gate is not None or config.scope == "none":
        store.scope = None
    elif config.scope:
        store.scope = load_scope(config.scope)
    elif store.scope is None:
        store.scope = scope_beside(settings.model)
    if gate is None and store.saved_gate() is None and (model_gate := aligned_gate(settings.model)) is not None:
        store.gate = model_gate
    return store


def load_scope(path: str) -> ScopeModel:
    if not (Path(path).expanduser() / META_FILE).is_file():
        raise InputFileError(f"lte: scope={path}: not a scope model folder (train one with `lte scope train --out "
                             f"{path}`)")
    return ScopeModel(path)


def load_gate(path: str) -> Gate:
    if not Path(path).expanduser().is_file():
        raise InputFileError(f"lte: gate={path}: no such file (write one with `lte edit calibrate --save-to FILE`)")
    return Gate.load(Path(path).expanduser())


def aligned_gate(model_spec: str) -> Gate | None:
    """The relevance gate `lte align` fitted on the model's alignment data, if the model has one."""
    path = Path(model_spec).expanduser() / GATE_FILE
    return Gate.load(path) if path.is_file() else None
