"""LTE phase 2: answer with retrieved edits in the prompt of the aligned model.

`apply` inserts edits into the EditStore; answering retrieves the top-k edits through the relevance gate, writes
them into the prompt (`lte.prompting`), and generates. A question with no relevant edit reaches the model with no
edit block at all, exactly as the unedited model would see it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Sequence

from lte import prompting
from lte.editor import ModelEditor, Query
from lte.models import LoadedModel
from lte.schema import Edit
from lte.settings import Settings
from retrieval.store import EditStore, Hit, open_client


@dataclass(frozen=True)
class Answer:
    text: str
    hits: tuple[Hit, ...]


class LTEEditor(ModelEditor):
    """Retrieval-augmented in-context editing. `k`: most edits put into one prompt."""

    name = "lte"

    def __init__(self, loaded: LoadedModel, store: EditStore, k: int = 3, batch_size: int = 16):
        super().__init__(loaded, batch_size)
        self.store, self.k = store, k
        self._applied: list[str] = []

    @classmethod
    def from_settings(cls, settings: Settings, loaded: LoadedModel, k: int = 3, batch_size: int = 16,
                      private_store: bool = True, threshold: float | None = None) -> "LTEEditor":
        """private_store: a fresh in-memory edit set (evaluation), never the user's store; otherwise the store
        named by the settings."""
        if private_store:
            store = EditStore(open_client(), f"eval-{uuid.uuid4().hex[:12]}", threshold=threshold)
        else:
            store = EditStore.open(settings.store_dir, settings.chroma_url, settings.collection, threshold=threshold)
        return cls(loaded, store, k, batch_size)

    def apply(self, edits: Sequence[Edit]) -> None:
        self.store.add(edits, progress=False)
        self._applied += [edit.id for edit in edits]

    def restore(self) -> None:
        for edit_id in self._applied:
            self.store.delete(edit_id)
        self._applied = []

    def retrieve(self, questions: Sequence[str]) -> list[list[Hit]]:
        return self.store.search_many(questions, self.k)

    def facts_for(self, queries: Sequence[Query]) -> list[list[str]]:
        return [[hit.edit.statement for hit in hits] for hits in self.retrieve([q.prompt for q in queries])]

    def answer(self, question: str, max_new_tokens: int = 64) -> Answer:
        """Answer one question; report which edits were used."""
        hits = self.retrieve([question])[0]
        prompt = prompting.render(self.loaded.tokenizer, question, [h.edit.statement for h in hits])
        text = self.runner.generate([prompt], max_new_tokens)[0].strip()
        if prompting.is_cloze(question):  # show the completed sentence, not only its continuation
            text = f"{prompting.assistant_prefill(question)} {text}"
        return Answer(text, tuple(hits))
