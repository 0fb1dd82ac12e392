"""The one interface every editing method implements, and the two reference editors (`none`, `context`).

The harness calls only `apply`, `restore`, `score` and `generate`. Editors that answer with a local causal LM derive
from `ModelEditor`, which renders prompts through `lte.prompting` so every method sees the same text; they differ
in what `apply` does (change weights, add hooks, store documents) and in the facts they put into the prompt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

from lte import prompting
from lte.models import LoadedModel
from lte.schema import Edit
from lte.scoring import ModelRunner, TargetScore


@dataclass(frozen=True)
class Query:
    """A prompt to answer. `case_edits` are the gold edits of the case it belongs to: only the oracle reads them."""

    prompt: str
    case_edits: tuple[Edit, ...] = ()


class Editor(ABC):
    """Apply edits, answer and score prompts, restore the unedited state."""

    name: ClassVar[str]

    @abstractmethod
    def apply(self, edits: Sequence[Edit]) -> None:
        """Make the edits take effect (in addition to those already applied)."""

    @abstractmethod
    def restore(self) -> None:
        """Undo every applied edit, back to the unedited state."""

    @abstractmethod
    def score(self, queries: Sequence[Query], targets: Sequence[str]) -> list[TargetScore]:
        """Teacher-forced log-probabilities of each target (an answer string) after its query."""

    @abstractmethod
    def generate(self, queries: Sequence[Query], max_new_tokens: int) -> list[str]:
        """Greedy answers."""

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model answering, for reports."""

    def stats(self) -> dict:
        """Sizes worth reporting with the edits applied (e.g. GRACE's codebook entries); none by default."""
        return {}

    def passed_edits(self, queries: Sequence[Query]) -> list[list[str]] | None:
        """For editors that choose edits per prompt (retrieval): the ids of the edits each query's prompt receives,
        so the harness can report retrieval precision and recall. None for editors that choose nothing."""
        return None


class ModelEditor(Editor):
    """An editor answering with one causal LM; subclasses override `apply`/`restore` and/or `facts_for`."""

    name = "model"

    def __init__(self, loaded: LoadedModel, batch_size: int = 16):
        self.loaded = loaded
        self.runner = ModelRunner(loaded.model, loaded.tokenizer, batch_size)

    @property
    def model_name(self) -> str:
        return self.loaded.spec

    def facts_for(self, queries: Sequence[Query]) -> list[list[str]]:
        """The facts written into each query's prompt; none by default."""
        return [[] for _ in queries]

    def render(self, queries: Sequence[Query]) -> list[str]:
        facts = self.facts_for(queries)
        return [prompting.render(self.loaded.tokenizer, q.prompt, f) for q, f in zip(queries, facts)]

    def score(self, queries: Sequence[Query], targets: Sequence[str]) -> list[TargetScore]:
        shaped = [prompting.format_target(q.prompt, t) for q, t in zip(queries, targets)]
        return self.runner.score(self.render(queries), shaped)

    def generate(self, queries: Sequence[Query], max_new_tokens: int) -> list[str]:
        return self.runner.generate(self.render(queries), max_new_tokens)

    def apply(self, edits: Sequence[Edit]) -> None:
        pass

    def restore(self) -> None:
        pass


class UneditedEditor(ModelEditor):
    """`none`: the base model, edits ignored. The floor every method must beat on reliability."""

    name = "none"


class OracleContextEditor(ModelEditor):
    """`context`: the case's gold edit statements written into the prompt (the LTE paper's oracle setting).
    It needs no retrieval and cannot miss, so it bounds what retrieval-based editing can reach."""

    name = "context"

    def facts_for(self, queries: Sequence[Query]) -> list[list[str]]:
        return [[edit.statement for edit in q.case_edits] for q in queries]
