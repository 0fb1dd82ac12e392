"""The one interface every editing method implements, and the two reference editors (`none`, `context`).

The harness calls only `apply`, `restore`, `score` and `generate`. Editors that answer with a local causal LM derive
from `ModelEditor`, which renders prompts through `lte.core.prompting` so every method sees the same text; they differ
in what `apply` does (change weights, add hooks, store documents) and in the facts they put into the prompt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from lte.core import prompting
from lte.core.config import NoOptions
from lte.core.models import LoadedModel, placement_of
from lte.core.schema import Edit
from lte.core.scoring import ModelRunner, TargetScore

if TYPE_CHECKING:
    from lte.core.settings import Settings


@dataclass(frozen=True)
class Query:
    """A prompt to answer. `case_edits` are the gold edits of the case it belongs to: only the oracle reads them."""

    prompt: str
    case_edits: tuple[Edit, ...] = ()


class Editor(ABC):
    """Apply edits, answer and score prompts, restore the unedited state.

    The contract (checked for every registered editor by tests/test_editor_contract.py): after `apply`, the edit's
    target scores higher on its prompt; after `restore`, every score is exactly what it was before the first
    `apply`; `stats()` is JSON; only the oracle reads `Query.case_edits`.
    Options come as one typed dataclass, `config_class` (filled by `--set KEY=VALUE`); `fixed_options` names options
    that are fixed elsewhere (a checkpoint) with the reason, so setting them is refused rather than ignored."""

    name: ClassVar[str]
    config_class: ClassVar[type] = NoOptions
    fixed_options: ClassVar[Mapping[str, str]] = {}
    config: Any = None  # the options this editor was built with (set by `lte.registry.build_editor`)

    @classmethod
    @abstractmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: Any, batch_size: int = 16) -> Editor:
        """Build the editor for `loaded` with its options; `settings` gives the cache directory and store."""

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

    @property
    def placement(self) -> str:
        """Where the model runs and in which precision ('cuda NVIDIA H200 bfloat16'), for reports; '' if unknown."""
        return ""

    def stats(self) -> dict:
        """Sizes worth reporting with the edits applied (e.g. GRACE's codebook entries); none by default."""
        return {}

    def passed_edits(self, queries: Sequence[Query]) -> list[list[str]] | None:
        """For editors that choose edits per prompt (retrieval): the ids of the edits each query's prompt receives,
        so the harness can report retrieval precision and recall. None for editors that choose nothing."""
        return None


class ModelEditor(Editor):
    """An editor answering with one causal LM. Subclasses implement `apply`/`restore` (abstract: an editor that
    forgot them would silently be `none`) and may override `facts_for` to put facts into the prompt."""

    name = "model"

    def __init__(self, loaded: LoadedModel, batch_size: int = 16):
        self.loaded = loaded
        self.runner = ModelRunner(loaded.model, loaded.tokenizer, batch_size, loaded.context)

    @classmethod
    def from_config(cls, settings: Settings, loaded: LoadedModel, config: Any = None,
                    batch_size: int = 16) -> ModelEditor:
        return cls(loaded, batch_size)

    @property
    def model_name(self) -> str:
        return self.loaded.spec

    @property
    def placement(self) -> str:
        return placement_of(self.loaded.model)

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


class UneditedEditor(ModelEditor):
    """`none`: the base model, edits ignored. The floor every method must beat on reliability."""

    name = "none"

    def apply(self, edits: Sequence[Edit]) -> None:
        """Ignored by design: this editor is the unedited reference."""

    def restore(self) -> None:
        """Nothing was changed."""


class OracleContextEditor(ModelEditor):
    """`context`: the case's gold edit statements written into the prompt (the LTE paper's oracle setting).
    It needs no retrieval and cannot miss, so it bounds what retrieval-based editing can reach."""

    name = "context"

    def apply(self, edits: Sequence[Edit]) -> None:
        """Nothing to store: the gold edits reach the prompt through each query's `case_edits`."""

    def restore(self) -> None:
        """Nothing was stored."""

    def facts_for(self, queries: Sequence[Query]) -> list[list[str]]:
        return [[edit.statement for edit in q.case_edits] for q in queries]
