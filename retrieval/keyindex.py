"""The key index: the retrieval keys of every current edit, embedded, in one Chroma collection (`<name>-keys`).

One row per key (the edit's prompt, its statement, each paraphrase), id `<edit id>:<n>`, pointing at its edit. It is
derived from the records (`retrieval.records`) and can be rebuilt from them; search reads candidates here and the
records decide which are current. Key texts live in metadata, not documents: Chroma's full-text index on documents
cost ~15 % of write time and nothing searches text.
"""

from __future__ import annotations

from collections.abc import Sequence

from lte.core.schema import Edit

# Cosine HNSW searched 400 candidates deep (Chroma's default, 100, is approximate enough that two builds of the same
# 1,000 CounterFact edits disagreed on 1-2 of 600 paraphrase and neighbour queries: an edit found in one build,
# missed in the other; at 400, five builds agreed and search time did not move, as the gate's embeddings dominate
# it; results/retrieval-determinism.txt).
KEY_INDEX = {"hnsw:space": "cosine", "hnsw:search_ef": 400}

Key = tuple[str, str, str, str, list[float]]  # (key id, edit id, kind, text, vector)


def key_texts(edit: Edit) -> list[tuple[str, str]]:
    """(kind, text) for every key an edit is found under, without repeats."""
    keys, seen = [], set()
    for kind, text in [("prompt", edit.prompt), ("statement", edit.statement)] + [("paraphrase", p)
                                                                                  for p in edit.paraphrases]:
        if text and text.lower() not in seen:
            seen.add(text.lower())
            keys.append((kind, text))
    return keys


def key_ids(edit: Edit) -> list[str]:
    return [f"{edit.id}:{i}" for i in range(len(key_texts(edit)))]


def edit_of(key_id: str) -> str:
    return key_id.rsplit(":", 1)[0]


class KeyIndex:
    """The keys collection of one edit set on a Chroma client."""

    def __init__(self, client, name: str):
        self.client, self.name = client, f"{name}-keys"
        self.collection = client.get_or_create_collection(self.name, metadata=KEY_INDEX, embedding_function=None)
        self._deepen()

    def _deepen(self) -> None:
        """A keys collection created outside lte (a shared Chroma server, Chroma's own tools) searches at Chroma's
        default depth; raise it in place."""
        depth = KEY_INDEX["hnsw:search_ef"]
        hnsw = (self.collection.configuration or {}).get("hnsw") or {}
        if hnsw.get("ef_search", depth) < depth:
            self.collection.modify(configuration={"hnsw": {"ef_search": depth}})

    @property
    def step(self) -> int:
        return self.client.get_max_batch_size()

    def upsert(self, keys: Sequence[Key]) -> None:
        for start in range(0, len(keys), self.step):
            part = keys[start:start + self.step]
            self.collection.upsert(ids=[k[0] for k in part], embeddings=[k[4] for k in part],
                                   metadatas=[{"edit_id": k[1], "kind": k[2], "text": k[3]} for k in part])

    def present(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), self.step):
            found.update(self.collection.get(ids=list(ids[start:start + self.step]), include=[])["ids"])
        return found

    def remove_edits(self, edit_ids: Sequence[str]) -> None:
        """Every key of these edits, whatever their number (a record may be gone, so its keys are found by edit)."""
        for start in range(0, len(edit_ids), 100):
            part = list(edit_ids[start:start + 100])
            self.collection.delete(where={"edit_id": {"$in": part}} if len(part) > 1 else {"edit_id": part[0]})

    def query(self, vectors: list[list[float]], n: int) -> dict:
        return self.collection.query(query_embeddings=vectors, n_results=n, include=["metadatas", "distances"])

    def count(self) -> int:
        return self.collection.count()

    def edit_ids(self, page: int = 10_000):
        """Every edit id the index holds keys for, page by page (`repair` compares them with the records)."""
        offset = 0
        while True:
            rows = self.collection.get(include=["metadatas"], limit=page, offset=offset)
            if not rows["ids"]:
                return
            yield {m["edit_id"] for m in rows["metadatas"]}
            offset += len(rows["ids"])

    def drop(self) -> None:
        """Delete the collection and start an empty one (the fastest way to clear it)."""
        self.client.delete_collection(self.name)
        self.collection = self.client.get_or_create_collection(self.name, metadata=KEY_INDEX,
                                                               embedding_function=None)
