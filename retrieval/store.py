"""The edit store: edits as documents in Chroma, found by meaning, with a relevance gate.

Two collections per named edit set:
- `<name>-keys`: one row per retrieval key (the edit's prompt, its statement, each paraphrase) of every *current*
  edit, embedded, each pointing at its edit. Superseded edits have no keys, so a search needs no metadata filter
  (a filtered query was 4x slower at 10k edits); restoring an edit re-embeds its keys. Key texts live in metadata,
  not documents: Chroma's full-text index on documents cost ~15 % of write time and nothing searches text;
- `<name>-edits`: one row per edit holding the full record, its supersede key and status (current / superseded).
Keys are written before the record, and search ignores keys whose record is missing, so an interrupted import never
exposes half an edit, and re-running it completes the work (ids are content hashes: nothing is added twice).

Which candidates a search returns is decided by the store's scope model (`retrieval.scope`, a cross-encoder) when it
has one, else by the logistic relevance gate (`retrieval.gate`), the fallback. The store records the folder of the
scope model it uses in the records collection's metadata.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lte.core import files
from lte.core.errors import InputError, NotFoundError
from lte.core.schema import Edit, EditCase, nfc
from retrieval import gate as gates
from retrieval.embedder import Embedder
from retrieval.gate import UNFITTED, Gate
from retrieval.scope import ScopeModel
from retrieval.writelock import DeleteJournal, WriteLock

log = logging.getLogger(__name__)

CURRENT, SUPERSEDED = "current", "superseded"
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
    """Counts, plus which edits this call stored and which stored edits it made history (so it can be undone)."""

    added: int
    skipped: int
    superseded: int
    added_ids: tuple[str, ...] = ()
    superseded_ids: tuple[str, ...] = ()


def collect(result: tuple[int, list[str]], superseded: list[str]) -> int:
    """Add one written batch's superseded stored ids to `superseded`; return its superseded count."""
    count, ids = result
    superseded += ids
    return count


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


# The key index: cosine HNSW searched 400 candidates deep (Chroma's default, 100, is approximate enough that two
# builds of the same 1,000 CounterFact edits disagreed on 1-2 of 600 paraphrase and neighbour queries: an edit
# found in one build, missed in the other; at 400, five builds agreed and search time did not move, as the gate's
# embeddings dominate it; results/retrieval-determinism.txt).
KEY_INDEX = {"hnsw:space": "cosine", "hnsw:search_ef": 400}


class EditStore:
    """Add, find, supersede and delete edits. One instance per named edit set (`collection`)."""

    def __init__(self, client, collection: str = "edits", embedder: Embedder | None = None,
                 gate: Gate | None = None, directory: Path | None = None, scope: ScopeModel | None = None):
        """scope: the scope model that decides which candidates pass; default the one recorded with the store
        (`set_scope`), else none, and the relevance gate decides. gate: the fallback relevance gate; default the
        one saved with the store by `calibrate`, else `retrieval.gate.UNFITTED`. directory: an embedded store's
        folder (its write lock and delete journal live there; see retrieval/writelock.py)."""
        self.client = client
        self.lock, self.journal = WriteLock(directory), DeleteJournal(directory)
        self.name = collection
        self._embedder = embedder
        self._vectors: dict[str, np.ndarray] = {}  # embedding cache for the gate's masked texts
        self.keys = client.get_or_create_collection(f"{collection}-keys", metadata=KEY_INDEX,
                                                    embedding_function=None)
        self.records = client.get_or_create_collection(f"{collection}-edits", embedding_function=None)
        self.gate = gate or self.saved_gate() or UNFITTED
        self.scope = scope or self.saved_scope()
        self._deepen_key_search()

    def _deepen_key_search(self) -> None:
        """A keys collection created outside lte (a shared Chroma server, Chroma's own tools) searches at Chroma's
        default depth; raise it in place."""
        depth = KEY_INDEX["hnsw:search_ef"]
        hnsw = (self.keys.configuration or {}).get("hnsw") or {}
        if hnsw.get("ef_search", depth) < depth:
            self.keys.modify(configuration={"hnsw": {"ef_search": depth}})

    @classmethod
    def open(cls, path: Path | None = None, url: str | None = None, collection: str = "edits",
             embedder: Embedder | None = None, gate: Gate | None = None, scope: ScopeModel | None = None
             ) -> EditStore:
        """The embedded store under `path` (created under its write lock: two processes may open a new store at
        once), or the collection on the Chroma server at `url`. A delete a crash interrupted is finished here."""
        directory = Path(path) if path is not None and not url else None
        if directory is None:
            return cls(open_client(path, url), collection, embedder, gate, scope=scope)
        directory.mkdir(parents=True, exist_ok=True)
        with WriteLock(directory).held():
            store = cls(open_client(directory), collection, embedder, gate, directory, scope)
            store.finish_pending_deletes()
        return store

    def finish_pending_deletes(self) -> None:
        for edit_id in self.journal.pending():
            log.warning("lte: finishing the delete of edit %s that an earlier process left half done", edit_id)
            self._delete_rows(edit_id)
        self.journal.clear()

    @property
    def threshold(self) -> float:
        return self.scope.threshold if self.scope is not None else self.gate.threshold

    def decider(self) -> str:
        """Which model decides what passes, in words (`lte edit search` prints it)."""
        if self.scope is not None:
            return self.scope.describe()
        return (f"relevance gate (fallback: no scope model; threshold {self.gate.threshold:.3f}; train one with "
                "`lte scope train` or `lte align`)")

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # loaded lazily: listing and counting need no model
            self._embedder = Embedder()
        return self._embedder

    # ------------------------------------------------------------ writing

    def add(self, edits: Iterable[Edit], batch_size: int = 256, progress: bool = True,
            where: Mapping[str, str] | None = None) -> AddReport:
        """Insert edits in batches; an edit whose id is stored already is skipped, unless its content differs (an
        explicit id reused for another fact: refused, naming `where[id]`, e.g. the file and line). A newer edit for
        the same subject and relation supersedes the current one (kept as history).

        Batches are pipelined: while one batch is written to Chroma on a worker thread, the next is embedded, so
        the store costs little beyond the embedder. Writes stay in input order (one writer)."""
        with self.lock.held():
            return self._add(list({edit.id: edit for edit in edits}.values()), batch_size, progress, where or {})

    def _add(self, edits: list[Edit], batch_size: int, progress: bool, where: Mapping[str, str]) -> AddReport:
        stored = self._stored_ids([e.id for e in edits])
        self._refuse_reused_ids([e for e in edits if e.id in stored], where)
        fresh = [e for e in edits if e.id not in stored]
        superseded: list[str] = []
        counted = 0
        with tqdm(total=len(edits), desc="adding edits", unit="edit", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=1) as writer:
            bar.update(len(edits) - len(fresh))
            pending = None
            for start in range(0, len(fresh), batch_size):
                batch = fresh[start:start + batch_size]
                keys = self._embedded_keys(list(newest_per_slot(batch).values()))
                if pending is not None:
                    counted += collect(pending.result(), superseded)
                pending = writer.submit(self._write_batch, batch, keys, bar)
            if pending is not None:
                counted += collect(pending.result(), superseded)
        return AddReport(len(fresh), len(edits) - len(fresh), counted, tuple(e.id for e in fresh), tuple(superseded))

    def _refuse_reused_ids(self, edits: Sequence[Edit], where: Mapping[str, str]) -> None:
        if not edits:
            return
        stored = {s.edit.id: s.edit for s in self._decode(self.records.get(ids=[e.id for e in edits],
                                                                            include=["metadatas"]))}
        clashes = [e for e in edits if e.id in stored and not e.same_content(stored[e.id])]
        if clashes:
            first = clashes[0]
            raise InputError(
                f"{where.get(first.id, 'edit ' + first.id)}: id {first.id!r} is already stored for another edit "
                f"({stored[first.id].statement!r}, not {first.statement!r}); give it a new id or none"
                + (f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""))

    def _stored_ids(self, ids: Sequence[str]) -> set[str]:
        step = self.client.get_max_batch_size()
        return {i for start in range(0, len(ids), step)
                for i in self.records.get(ids=list(ids[start:start + step]), include=[])["ids"]}

    def _embedded_keys(self, edits: Sequence[Edit]) -> list[tuple[str, str, str, str, list[float]]]:
        """(key id, edit id, kind, text, vector) for every key of `edits`."""
        rows = [(f"{e.id}:{i}", e.id, kind, text) for e in edits for i, (kind, text) in enumerate(key_texts(e))]
        vectors = self.embedder.encode([row[3] for row in rows]).tolist() if rows else []
        return [row + (vector,) for row, vector in zip(rows, vectors)]

    def _write_batch(self, edits: Sequence[Edit], keys: list, bar) -> tuple[int, list[str]]:
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

    def _write_records(self, edits: Sequence[Edit]) -> tuple[int, list[str]]:
        """Store the records; older edits of the same slot become history. Returns how many were superseded and
        the ids of the previously stored ones among them.

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
        return len(stored_losers) + len(edits) - len(winners), [old.id for old in stored_losers]

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
        """Remove an edit and its keys. Returns False when there was no such edit. The record goes first, so its
        keys are invisible at once (search resolves keys through records); the journal names the id until the
        keys are gone too, so a crash in between is finished at the next open."""
        with self.lock.held():
            if not self.records.get(ids=[edit_id], include=[])["ids"]:
                return False
            with self.journal.deleting(edit_id):
                self._delete_rows(edit_id)
            return True

    def _delete_rows(self, edit_id: str) -> None:
        self.records.delete(ids=[edit_id])
        self.keys.delete(where={"edit_id": edit_id})

    def restore(self, edit_id: str) -> StoredEdit:
        """Make a superseded edit current again; the edit currently holding its slot becomes history."""
        with self.lock.held():
            stored = self.get(edit_id)
            if stored is None:
                raise NotFoundError(f"no edit with id {edit_id}")
            for current in self._current_for([stored.edit.supersede_key]):
                if current.edit.id != edit_id:
                    self._set_status(current.edit.id, SUPERSEDED, edit_id)
            self._set_status(edit_id, CURRENT)
            return self.get(edit_id)

    def clear(self) -> None:
        with self.lock.held():
            self._clear()

    def _clear(self) -> None:
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
        """The k best current edits per query among its candidates (`candidates`), ranked by the scope model's (or
        the gate's) probability; with `gated`, only those scoring at least `threshold`."""
        shortlists = self.candidates(queries, k)
        flat = [(q, edit, cosine, key) for q, shortlist in enumerate(shortlists) for edit, cosine, key in shortlist]
        scores = self.relevance([queries[q] for q, *_ in flat], [c[1] for c in flat], [c[2] for c in flat])
        floor = self.threshold if gated else float("-inf")
        results: list[list[Hit]] = [[] for _ in queries]
        for (q, edit, _, key), score in zip(flat, scores):
            if score >= floor:
                results[q].append(Hit(edit, score, key))
        return [sorted(hits, key=lambda h: -h.score)[:k] for hits in results]

    def candidates(self, queries: Sequence[str], k: int = 3) -> list[list[tuple[Edit, float, str]]]:
        """Per query, the 2k current edits nearest to it by their best key: (edit, cosine, key text), nearest
        first. What the scope model or gate then decides on."""
        if not queries:
            return []
        queries = [nfc(q) for q in queries]  # as the edits are stored: one spelling per text
        # No count() to cap n_results: Chroma returns fewer rows when it has fewer, and count() scans the
        # collection (13 ms at 200k keys, more than the query itself).
        result = self.keys.query(query_embeddings=self.embedder.encode(queries).tolist(), n_results=max(4 * k, 8),
                                 include=["metadatas", "distances"])
        best_per_query = [self._best_edits(m, d, k) for m, d in zip(result["metadatas"], result["distances"])]
        records = self._records({edit_id for best in best_per_query for edit_id, _, _ in best})
        return [[(records[i], cosine, key) for i, cosine, key in best if i in records] for best in best_per_query]

    def relevance(self, queries: Sequence[str], edits: Sequence[Edit], cosines: Sequence[float]) -> list[float]:
        """The probability that each edit answers its query: the scope model's, else the gate's."""
        if not queries:
            return []
        queries = [nfc(q) for q in queries]
        if self.scope is not None:
            pairs = [(q, e.prompt) for q, e in zip(queries, edits)]
            return [round(float(p), 4) for p in self.scope.probabilities(pairs)]
        if self.gate.weights[2] == 0:  # the unfitted gate ignores the relation: skip its embeddings
            features = [(c, gates.subject_coverage(q, e.subject), 0.0) for q, e, c in zip(queries, edits, cosines)]
        else:
            features = gates.pair_features(queries, edits, cosines, self._embed_cached)
        return [round(self.gate.probability(f), 4) for f in features]

    def _embed_cached(self, texts: Sequence[str]) -> list[np.ndarray]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if len(self._vectors) + len(missing) > 100_000:
            self._vectors.clear()
        self._vectors.update(zip(missing, self.embedder.encode(missing)))
        return [self._vectors[t] for t in texts]

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

    def calibrate(self, cases: Sequence[EditCase], save: bool = True) -> Gate:
        """Fit the relevance gate on labelled training cases (see `fit_gate_on`) and, with `save`, keep it with
        the store."""
        gate = fit_gate_on(cases, self.embedder)
        if save:
            self.set_gate(gate)
        return gate

    def set_gate(self, gate: Gate) -> None:
        self.gate = gate
        self._set_metadata(gate=gate.to_json())

    def set_scope(self, scope: ScopeModel | None) -> None:
        """Use `scope` (None: the gate) and record its folder with the store, for every later open."""
        self.scope = scope
        self._set_metadata(scope=str(scope.path.resolve()) if scope is not None else "")

    def _set_metadata(self, **values: str) -> None:
        with self.lock.held():
            self.records.modify(metadata={**(self.records.metadata or {}), **values})

    def saved_scope(self) -> ScopeModel | None:
        path = (self.records.metadata or {}).get("scope")
        if not path:
            return None
        if not (Path(path) / "scope.json").is_file():
            log.warning("lte: the store's scope model %s is missing; the relevance gate decides instead", path)
            return None
        return ScopeModel(path)

    def saved_gate(self) -> Gate | None:
        metadata = self.records.metadata or {}
        if "gate" in metadata:
            return Gate.from_json(metadata["gate"])
        return None

    # ------------------------------------------------------------ export

    def export(self, path: Path, history: bool = False) -> int:
        """Write edits as JSONL (atomically) and return how many."""
        stored = self.list(history)
        with files.atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
            for item in stored:
                handle.write(json.dumps(item.edit.to_dict(), ensure_ascii=False) + "\n")
        return len(stored)


def newest_per_slot(edits: Sequence[Edit]) -> dict[str, Edit]:
    """The edit that holds each (subject, relation) slot: the last one in input order."""
    return {e.supersede_key: e for e in edits}


def fit_gate_on(cases: Sequence[EditCase], embedder: Embedder) -> Gate:
    """A relevance gate fitted on training cases: each case's own and paraphrase prompts should pass its edit,
    its locality prompts should not. Cosines are taken over the same retrieval keys the store indexes."""
    return gates.fit_gate(gates.gate_pairs(cases), embedder.encode, lambda e: [t for _, t in key_texts(e)],
                          embedder.name)
