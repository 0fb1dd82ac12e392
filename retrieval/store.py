"""The edit store: edits as documents in Chroma, found by meaning, with a relevance gate.

Two collections per named edit set:
- `<name>-keys`: one row per retrieval key (the edit's prompt, its statement, each paraphrase) of every *current*
  edit, embedded, each pointing at its edit. Superseded edits have no keys, so a search needs no metadata filter
  (a filtered query was 4x slower at 10k edits); restoring an edit re-embeds its keys. Key texts live in metadata,
  not documents: Chroma's full-text index on documents cost ~15 % of write time and nothing searches text;
- `<name>-edits`: one row per edit holding the full record, its supersede key and status (current / superseded).
Keys are written before the record, and search ignores keys whose record is missing, so an interrupted import never
exposes half an edit, and re-running it completes the work (ids are content hashes: nothing is added twice).
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from lte.schema import Edit
from retrieval.embedder import Embedder

CURRENT, SUPERSEDED = "current", "superseded"
# Relevance (see `relevance`) below which a hit is treated as unrelated. Picked with `calibrate` on CounterFact
# paraphrase (related) and neighbourhood (unrelated) prompts with all-MiniLM-L6-v2; see benchmarks/edit_store.py.
DEFAULT_THRESHOLD = 0.5
_PLACEHOLDER = [0.0]  # the records collection is looked up by id and metadata only; Chroma still wants a vector


@dataclass(frozen=True)
class Hit:
    edit: Edit
    score: float
    key: str


@dataclass(frozen=True)
class StoredEdit:
    edit: Edit
    status: str
    superseded_by: str = ""


@dataclass(frozen=True)
class AddReport:
    added: int
    skipped: int
    superseded: int


@dataclass(frozen=True)
class Calibration:
    threshold: float
    precision: float
    recall: float
    n_related: int
    n_unrelated: int


def open_client(path: Path | None = None, url: str | None = None):
    """An embedded persistent client under `path`, or an HTTP client for a running `chroma run` server."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if url:
        from urllib.parse import urlparse

        parsed = urlparse(url)
        return chromadb.HttpClient(host=parsed.hostname or "127.0.0.1", port=parsed.port or 8000,
                                   ssl=parsed.scheme == "https", settings=chroma_settings)
    if path is None:
        return chromadb.EphemeralClient(settings=chroma_settings)
    Path(path).mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings)


def key_texts(edit: Edit) -> list[tuple[str, str]]:
    """(kind, text) for every key an edit is found under, without repeats."""
    keys, seen = [], set()
    for kind, text in [("prompt", edit.prompt), ("statement", edit.statement)] + [("paraphrase", p)
                                                                                  for p in edit.paraphrases]:
        if text and text.lower() not in seen:
            seen.add(text.lower())
            keys.append((kind, text))
    return keys


class EditStore:
    """Add, find, supersede and delete edits. One instance per named edit set (`collection`)."""

    def __init__(self, client, collection: str = "edits", embedder: Embedder | None = None,
                 threshold: float | None = None):
        self.client = client
        self.name = collection
        self._embedder = embedder
        self.keys = client.get_or_create_collection(f"{collection}-keys", metadata={"hnsw:space": "cosine"},
                                                    embedding_function=None)
        self.records = client.get_or_create_collection(f"{collection}-edits", embedding_function=None)
        self.threshold = threshold if threshold is not None else self._saved_threshold()

    @classmethod
    def open(cls, path: Path | None = None, url: str | None = None, collection: str = "edits",
             embedder: Embedder | None = None, threshold: float | None = None) -> "EditStore":
        return cls(open_client(path, url), collection, embedder, threshold)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # loaded lazily: listing and counting need no model
            self._embedder = Embedder()
        return self._embedder

    # ------------------------------------------------------------ writing

    def add(self, edits: Iterable[Edit], batch_size: int = 256, progress: bool = True) -> AddReport:
        """Insert edits in batches; an edit whose id is stored already is skipped. A newer edit for the same
        subject and relation supersedes the current one (kept as history).

        Batches are pipelined: while one batch is written to Chroma on a worker thread, the next is embedded, so
        the store costs little beyond the embedder. Writes stay in input order (one writer)."""
        edits = list({edit.id: edit for edit in edits}.values())
        stored = self._stored_ids([e.id for e in edits])
        fresh = [e for e in edits if e.id not in stored]
        superseded = 0
        with tqdm(total=len(edits), desc="adding edits", unit="edit", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=1) as writer:
            bar.update(len(edits) - len(fresh))
            pending = None
            for start in range(0, len(fresh), batch_size):
                batch = fresh[start:start + batch_size]
                keys = self._embedded_keys(list(newest_per_slot(batch).values()))
                if pending is not None:
                    superseded += pending.result()
                pending = writer.submit(self._write_batch, batch, keys, bar)
            if pending is not None:
                superseded += pending.result()
        return AddReport(len(fresh), len(edits) - len(fresh), superseded)

    def _stored_ids(self, ids: Sequence[str]) -> set[str]:
        step = self.client.get_max_batch_size()
        return {i for start in range(0, len(ids), step)
                for i in self.records.get(ids=list(ids[start:start + step]), include=[])["ids"]}

    def _embedded_keys(self, edits: Sequence[Edit]) -> list[tuple[str, str, str, str, list[float]]]:
        """(key id, edit id, kind, text, vector) for every key of `edits`."""
        rows = [(f"{e.id}:{i}", e.id, kind, text) for e in edits for i, (kind, text) in enumerate(key_texts(e))]
        vectors = self.embedder.encode([row[3] for row in rows]).tolist() if rows else []
        return [row + (vector,) for row, vector in zip(rows, vectors)]

    def _write_batch(self, edits: Sequence[Edit], keys: list, bar) -> int:
        self._write_keys(keys)
        superseded = self._write_records(edits)
        bar.update(len(edits))
        return superseded

    def _write_keys(self, keys: list[tuple[str, str, str, str, list[float]]]) -> None:
        step = self.client.get_max_batch_size()
        for start in range(0, len(keys), step):
            part = keys[start:start + step]
            self.keys.upsert(ids=[k[0] for k in part], embeddings=[k[4] for k in part],
                             metadatas=[{"edit_id": k[1], "kind": k[2], "text": k[3]} for k in part])

    def _write_records(self, edits: Sequence[Edit]) -> int:
        """Store the records; older edits of the same slot become history. Returns how many were superseded.

        Stored edits are superseded before the new records are written: a crash in between leaves the slot with no
        current edit rather than two, and re-running the import writes the new record."""
        winners = newest_per_slot(edits)
        new_ids = {e.id for e in winners.values()}
        stored_losers = [r.edit for r in self._current_for(list(winners)) if r.edit.id not in new_ids]
        for old in stored_losers:
            self._set_status(old.id, SUPERSEDED, winners[old.supersede_key].id)
        seq = time.time_ns()
        metas = [self._record_meta(e, seq + i) if winners[e.supersede_key] is e else
                 self._record_meta(e, seq + i, SUPERSEDED, winners[e.supersede_key].id) for i, e in enumerate(edits)]
        self.records.upsert(ids=[e.id for e in edits], embeddings=[_PLACEHOLDER] * len(edits), metadatas=metas)
        return len(stored_losers) + len(edits) - len(winners)

    @staticmethod
    def _record_meta(edit: Edit, seq: int, status: str = CURRENT, superseded_by: str = "") -> dict:
        return {"edit": json.dumps(edit.to_dict(), ensure_ascii=False), "slot": edit.supersede_key,
                "status": status, "superseded_by": superseded_by, "seq": seq}

    def _set_status(self, edit_id: str, status: str, superseded_by: str = "") -> None:
        """Change an edit's status; its keys follow (removed when superseded, re-embedded when current again)."""
        found = self.records.get(ids=[edit_id], include=["metadatas"])
        if not found["ids"]:
            return
        meta = dict(found["metadatas"][0], status=status, superseded_by=superseded_by)
        if status == CURRENT:
            self._write_keys(self._embedded_keys([Edit.from_dict(json.loads(meta["edit"]))]))
        else:
            self.keys.delete(where={"edit_id": edit_id})
        self.records.update(ids=[edit_id], metadatas=[meta])

    def _current_for(self, slots: list[str]) -> list[StoredEdit]:
        if not slots:
            return []
        where = {"$and": [{"slot": {"$in": slots}}, {"status": CURRENT}]}
        return self._decode(self.records.get(where=where, include=["metadatas"]))

    def delete(self, edit_id: str) -> bool:
        """Remove an edit and its keys. Returns False when there was no such edit."""
        if not self.records.get(ids=[edit_id], include=[])["ids"]:
            return False
        self.records.delete(ids=[edit_id])  # record first: its keys become invisible at once
        self.keys.delete(where={"edit_id": edit_id})
        return True

    def restore(self, edit_id: str) -> StoredEdit:
        """Make a superseded edit current again; the edit currently holding its slot becomes history."""
        stored = self.get(edit_id)
        if stored is None:
            raise KeyError(f"no edit with id {edit_id}")
        for current in self._current_for([stored.edit.supersede_key]):
            if current.edit.id != edit_id:
                self._set_status(current.edit.id, SUPERSEDED, edit_id)
        self._set_status(edit_id, CURRENT)
        return self.get(edit_id)

    def clear(self) -> None:
        for collection in (self.keys, self.records):
            ids = collection.get(include=[])["ids"]
            for start in range(0, len(ids), self.client.get_max_batch_size()):
                collection.delete(ids=ids[start:start + self.client.get_max_batch_size()])

    # ------------------------------------------------------------ reading

    def get(self, edit_id: str) -> StoredEdit | None:
        found = self._decode(self.records.get(ids=[edit_id], include=["metadatas"]))
        return found[0] if found else None

    def list(self, history: bool = False) -> list[StoredEdit]:
        """Current edits (and superseded ones with history=True), oldest first."""
        where = None if history else {"status": CURRENT}
        return self._decode(self.records.get(where=where, include=["metadatas"]))

    def count(self, history: bool = False) -> int:
        if history:
            return self.records.count()
        return len(self.records.get(where={"status": CURRENT}, include=[])["ids"])

    @staticmethod
    def _decode(result: dict) -> list[StoredEdit]:
        rows = sorted(result["metadatas"] or [], key=lambda m: m["seq"])
        return [StoredEdit(Edit.from_dict(json.loads(m["edit"])), m["status"], m.get("superseded_by", ""))
                for m in rows]

    def search(self, query: str, k: int = 3, gated: bool = True) -> list[Hit]:
        return self.search_many([query], k, gated)[0]

    def search_many(self, queries: Sequence[str], k: int = 3, gated: bool = True) -> list[list[Hit]]:
        """The k best current edits per query; with `gated`, only those scoring at least `threshold`."""
        if not queries:
            return []
        # No count() to cap n_results: Chroma returns fewer rows when it has fewer, and count() scans the
        # collection (13 ms at 200k keys, more than the query itself).
        result = self.keys.query(query_embeddings=self.embedder.encode(queries).tolist(), n_results=max(4 * k, 8),
                                 include=["metadatas", "distances"])
        best_per_query = [self._best_edits(m, d, k) for m, d in zip(result["metadatas"], result["distances"])]
        records = self._records({edit_id for best in best_per_query for edit_id, _, _ in best})
        floor = self.threshold if gated else float("-inf")
        results = []
        for query, best in zip(queries, best_per_query):
            hits = [Hit(records[i], relevance(query, records[i], score), key) for i, score, key in best if i in records]
            results.append(sorted((h for h in hits if h.score >= floor), key=lambda h: -h.score)[:k])
        return results

    @staticmethod
    def _best_edits(metadatas: list, distances: list, k: int) -> list[tuple[str, float, str]]:
        best: dict[str, tuple[float, str]] = {}
        for meta, distance in zip(metadatas, distances):
            score = 1.0 - float(distance)  # cosine distance → cosine similarity
            if meta["edit_id"] not in best or score > best[meta["edit_id"]][0]:
                best[meta["edit_id"]] = (score, meta["text"])
        ranked = sorted(best.items(), key=lambda item: -item[1][0])[: 2 * k]  # re-ranked by relevance later
        return [(edit_id, round(score, 4), text) for edit_id, (score, text) in ranked]

    def _records(self, ids: set[str]) -> dict[str, Edit]:
        if not ids:
            return {}
        found = self.records.get(ids=list(ids), include=["metadatas"])
        return {i: Edit.from_dict(json.loads(m["edit"])) for i, m in zip(found["ids"], found["metadatas"])}

    # ------------------------------------------------------------ the relevance gate

    def calibrate(self, related: Sequence[tuple[str, str]], unrelated: Sequence[str], save: bool = True) -> Calibration:
        """Pick the threshold that maximises accuracy of the gate on labelled queries.

        related: (query, id of the edit it should retrieve); a gate pass counts only if that edit ranks first.
        unrelated: queries that should retrieve nothing.
        """
        tops = self.search_many([q for q, _ in related] + list(unrelated), k=1, gated=False)
        pos = [hits[0].score if hits and hits[0].edit.id == want else None
               for hits, (_, want) in zip(tops[: len(related)], related)]
        neg = [hits[0].score if hits else -1.0 for hits in tops[len(related):]]
        candidates = sorted({s for s in pos if s is not None} | set(neg))
        threshold = max(candidates, key=lambda t: _gate_accuracy(t, pos, neg), default=DEFAULT_THRESHOLD)
        threshold = round(float(threshold) - 1e-4, 4)  # a hit scoring exactly the threshold passes
        true_pos = sum(1 for s in pos if s is not None and s >= threshold)
        false_pos = sum(1 for s in neg if s >= threshold)
        report = Calibration(threshold, true_pos / max(true_pos + false_pos, 1), true_pos / max(len(pos), 1),
                             len(pos), len(neg))
        if save:
            self.set_threshold(threshold)
        return report

    def set_threshold(self, threshold: float) -> None:
        self.threshold = threshold
        self.records.modify(metadata={"threshold": threshold})

    def _saved_threshold(self) -> float:
        return float((self.records.metadata or {}).get("threshold", DEFAULT_THRESHOLD))

    # ------------------------------------------------------------ export

    def export(self, path: Path, history: bool = False) -> int:
        """Write edits as JSONL (atomically) and return how many."""
        stored = self.list(history)
        tmp = Path(path).with_suffix(Path(path).suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for item in stored:
                handle.write(json.dumps(item.edit.to_dict(), ensure_ascii=False) + "\n")
        tmp.replace(path)
        return len(stored)


def newest_per_slot(edits: Sequence[Edit]) -> dict[str, Edit]:
    """The edit that holds each (subject, relation) slot: the last one in input order."""
    return {e.supersede_key: e for e in edits}


SUBJECT_PENALTY = 0.3


def relevance(query: str, edit: Edit, cosine: float) -> float:
    """Cosine similarity, lowered when the query does not name the edit's subject. Embeddings alone rate
    'X is a native speaker of' close to any edit about another person's language; the subject tells them apart."""
    subject = _words(edit.subject)
    overlap = len(subject & _words(query)) / len(subject) if subject else 1.0
    return round(cosine - SUBJECT_PENALTY * (1.0 - overlap), 4)


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _gate_accuracy(threshold: float, pos: list[float | None], neg: list[float]) -> float:
    right = sum(1 for s in pos if s is not None and s >= threshold) + sum(1 for s in neg if s < threshold)
    return right / max(len(pos) + len(neg), 1)
