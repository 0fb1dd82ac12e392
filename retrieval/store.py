"""The edit store: edit records in a transactional database, their retrieval keys in Chroma, found by meaning.

- The records (`retrieval.records`): every edit with its slot (subject + relation), status (current / superseded),
  history link and order, in SQLite (an embedded store's `records.sqlite3`) or PostgreSQL (a shared deployment).
  The database keeps one current edit per slot (a unique index) and makes each add, supersede, delete and restore
  one transaction. It is the source of truth.
- The key index (`retrieval.keyindex`): one Chroma row per retrieval key of every *current* edit, derived from the
  records and rebuildable from them (`rebuild_index`). Superseded edits have no keys, so a search needs no metadata
  filter; a search also drops any candidate the records do not hold as current, so a key that is briefly stale is
  never seen.
- Keeping the two in step (`_sync`): a write enqueues the edits it touches (`lte_index_queue`) in its own
  transaction, makes their keys follow, then dequeues them. New keys are written *before* the records that make
  them current, so a Chroma failure refuses the write with the records untouched. A writer killed anywhere leaves
  its queue rows, and the next open (`repair`) finishes them; `tests/test_crash_safety.py` kills writers at every
  kill point (`retrieval.faults`) and checks.
- An embedded Chroma may be used by one process at a time: the first process that needs the keys takes the
  store's index lease (`retrieval.lease`) and holds it while the store is open; other processes still add, delete
  and restore edits (records and queue), and the holder embeds their keys before its next search. A Chroma server
  takes many processes itself.

Which candidates a search returns is decided by the store's scope model (`retrieval.scope`, a cross-encoder) when it
has one, else by the logistic relevance gate (`retrieval.gate`), the fallback. The store records the folder of the
scope model it uses with its settings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lte.core import files
from lte.core.errors import InputError, NotFoundError
from lte.core.schema import Edit, EditCase, nfc
from retrieval import gate as gates
from retrieval.embedder import Embedder
from retrieval.faults import point
from retrieval.gate import UNFITTED, Gate
from retrieval.keyindex import KEY_INDEX, Key, KeyIndex, key_ids, key_texts
from retrieval.lease import IndexLease
from retrieval.records import CURRENT, SUPERSEDED, Record, RecordDB, sqlite_url
from retrieval.scope import ScopeModel

log = logging.getLogger(__name__)

__all__ = ["CURRENT", "KEY_INDEX", "SUPERSEDED", "AddReport", "EditStore", "Hit", "StoreCheck", "StoredEdit",
           "key_texts", "open_client"]

RECORDS_FILE = "records.sqlite3"
OLD_JOURNAL = ".lte-pending-delete"  # the delete journal of stores made before the records database
# An add of this many new edits embeds in a child process (`Embedder.in_child_process`): their keys take about 10 s
# of MiniLM or more on a 2-core CPU, so the child's ~7 s start is hidden behind the batches embedded meanwhile.
CHILD_EMBEDDING_FROM = 2_000


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
    seq: int = 0  # its place in the listing order: `list(after=seq)` continues after it


@dataclass(frozen=True)
class AddReport:
    """Counts, plus which edits this call stored and which stored edits it made history (so it can be undone)."""

    added: int
    skipped: int
    superseded: int
    added_ids: tuple[str, ...] = ()
    superseded_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreCheck:
    """What `verify` found against the store's invariants; `ok` when nothing."""

    current: int
    keys: int
    current_without_keys: tuple[str, ...]
    keys_without_current: tuple[str, ...]
    slots_with_several_current: tuple[str, ...]
    queued: int

    @property
    def ok(self) -> bool:
        return not (self.current_without_keys or self.keys_without_current or self.slots_with_several_current
                    or self.queued)


@dataclass(frozen=True)
class BatchResult:
    added: tuple[str, ...]
    skipped: int
    superseded: int
    superseded_stored: tuple[str, ...]


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


class EditStore:
    """Add, find, supersede and delete edits. One instance per named edit set (`collection`)."""

    def __init__(self, client, collection: str = "edits", embedder: Embedder | None = None,
                 gate: Gate | None = None, directory: Path | None = None, scope: ScopeModel | None = None,
                 records: RecordDB | None = None):
        """client: the Chroma client holding the key index (None with `directory`: the embedded Chroma there,
        opened when this process takes the index lease). records: the records database (default: a temporary one,
        for an in-memory store; `open` gives an embedded store its own file). scope: the scope model that decides
        which candidates pass; default the one recorded with the store (`set_scope`), else none, and the relevance
        gate decides. gate: the fallback relevance gate; default the one saved with the store by `calibrate`, else
        `retrieval.gate.UNFITTED`. directory: an embedded store's folder (its index lease lives there)."""
        self.client = client
        self.name = collection
        self.directory = directory
        self.lease = IndexLease(directory if client is None else None)
        self._index: KeyIndex | None = None
        self._embedder = embedder
        self._vectors: dict[str, np.ndarray] = {}  # embedding cache for the gate's masked texts
        self.records = records or RecordDB.temporary()
        if client is not None:
            self._open_index()
        self.gate = gate or self.saved_gate() or UNFITTED
        self.scope = scope or self.saved_scope()

    # ------------------------------------------------------------ the key index and its lease

    @property
    def index(self) -> KeyIndex:
        """The key index, taking the lease first where the store has one (waiting while another process holds
        it)."""
        if self._index is None:
            self.lease.take()
            self._open_index()
        return self._index

    def _index_if_free(self) -> KeyIndex | None:
        """The key index if this process holds or can take the lease now; None while another process holds it."""
        if self._index is None and self.lease.try_take():
            self._open_index()
        return self._index

    def _open_index(self) -> None:
        if self.client is None:
            self.client = open_client(self.directory)
        self._index = KeyIndex(self.client, self.name)
        self._migrate()
        self.repair()

    def close(self) -> None:
        """Let another process take the index (an embedded store's lease); the store reopens it when needed."""
        if self.directory is not None and self._index is not None:
            self._index, self.client = None, None
            self.lease.release()

    @property
    def keys(self):
        """The Chroma collection of retrieval keys."""
        return self.index.collection

    @classmethod
    def open(cls, path: Path | None = None, url: str | None = None, collection: str = "edits",
             embedder: Embedder | None = None, gate: Gate | None = None, scope: ScopeModel | None = None,
             records_url: str | None = None) -> EditStore:
        """The embedded store under `path` (records in `path/records.sqlite3` unless `records_url` says otherwise),
        or the collection on the Chroma server at `url` with its records at `records_url` (required there: several
        processes must share one records database). Whatever a killed writer left half done is finished here."""
        if url:
            if not records_url:
                raise InputError(f"the Chroma server {url} needs a records database that every process using it "
                                 "shares: give --records-url (LTE_RECORDS_URL), e.g. postgresql://host/lte or "
                                 "sqlite:////shared/folder/records.sqlite3 for processes on one machine")
            store = cls(open_client(url=url), collection, embedder, gate, scope=scope, records=RecordDB(records_url))
        elif path is None:
            store = cls(open_client(), collection, embedder, gate, scope=scope,
                        records=RecordDB(records_url) if records_url else None)
        else:
            directory = Path(path)
            directory.mkdir(parents=True, exist_ok=True)
            records = RecordDB(records_url or sqlite_url(directory / RECORDS_FILE))
            store = cls(None, collection, embedder, gate, directory, scope, records)
            store._index_if_free()  # the index (its move from the old layout, its repair) now if no process has it
        return store

    def decider(self) -> str:
        """Which model decides what passes, in words (`lte edit search` prints it)."""
        if self.scope is not None:
            return self.scope.describe()
        return (f"relevance gate (fallback: no scope model; threshold {self.gate.threshold:.3f}; train one with "
                "`lte scope train` or `lte align`)")

    @property
    def threshold(self) -> float:
        return self.scope.threshold if self.scope is not None else self.gate.threshold

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # loaded lazily: listing and counting need no model
            self._embedder = Embedder()
        return self._embedder

    # ------------------------------------------------------------ writing

    def add(self, edits: Iterable[Edit], batch_size: int = 256, progress: bool = True,
            where: Mapping[str, str] | None = None) -> AddReport:
        """Insert edits in batches, one transaction each; an edit whose id is stored already is skipped, unless its
        content differs (an explicit id reused for another fact: refused before anything is written, naming
        `where[id]`, e.g. the file and line). A newer edit for the same subject and relation supersedes the current
        one (kept as history); of several in one call, the last wins.

        Batches are pipelined: while one batch is written on a worker thread, the next is embedded, so the store
        costs little beyond the embedder; a long add embeds in a child process, which the writer cannot stall."""
        edits = list({edit.id: edit for edit in edits}.values())
        where = where or {}
        indexing = self._index_if_free() is not None  # else the index lease holder embeds the keys
        stored = self.records.get(self.name, [e.id for e in edits])
        self._refuse_reused_ids([e for e in edits if e.id in stored], stored, where)
        fresh = [e for e in edits if e.id not in stored]
        results: list[BatchResult] = []
        with tqdm(total=len(edits), desc="adding edits", unit="edit", disable=not progress) as bar, \
                self._embedding_for(len(fresh) if indexing else 0), ThreadPoolExecutor(max_workers=1) as writer:
            bar.update(len(edits) - len(fresh))
            pending = None
            for start in range(0, len(fresh), batch_size):
                batch = fresh[start:start + batch_size]
                keys = self._embedded_keys(list(newest_per_slot(batch).values())) if indexing else []
                if pending is not None:
                    results.append(pending.result())
                pending = writer.submit(self._write_batch, batch, keys, where, bar)
            if pending is not None:
                results.append(pending.result())
        added = tuple(i for r in results for i in r.added)
        return AddReport(len(added), len(edits) - len(added), sum(r.superseded for r in results), added,
                         tuple(i for r in results for i in r.superseded_stored))

    def _embedding_for(self, new_edits: int):
        """Where an add of this many new edits embeds: in a child process for long adds with the default embedder
        (its Chroma writes hold the GIL), else here."""
        if new_edits >= CHILD_EMBEDDING_FROM and isinstance(self.embedder, Embedder):
            return self.embedder.in_child_process()
        return nullcontext()

    def _refuse_reused_ids(self, edits: Sequence[Edit], stored: Mapping[str, Record],
                           where: Mapping[str, str]) -> None:
        clashes = [e for e in edits if not e.same_content(stored[e.id].edit)]
        if clashes:
            first = clashes[0]
            raise InputError(
                f"{where.get(first.id, 'edit ' + first.id)}: id {first.id!r} is already stored for another edit "
                f"({stored[first.id].edit.statement!r}, not {first.statement!r}); give it a new id or none"
                + (f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""))

    def _embedded_keys(self, edits: Sequence[Edit]) -> list[Key]:
        """(key id, edit id, kind, text, vector) for every key of `edits`."""
        rows = [(f"{e.id}:{i}", e.id, kind, text) for e in edits for i, (kind, text) in enumerate(key_texts(e))]
        vectors = self.embedder.encode([row[3] for row in rows]).tolist() if rows else []
        return [row + (vector,) for row, vector in zip(rows, vectors)]

    def _write_batch(self, batch: Sequence[Edit], keys: list[Key], where: Mapping[str, str], bar) -> BatchResult:
        """Queue the batch's new current edits, write their keys, store the records in one transaction (which
        makes them current and the slots' older edits history, and queues them all), then make the keys follow
        and dequeue. Without the index (another process holds its lease), the records and the queue only."""
        winners = [e.id for e in newest_per_slot(batch).values()]
        if keys:
            self.records.run(self.records.enqueue, self.name, winners)
            point("add:queued")
            self.index.upsert(keys)
            point("add:keys")
        result = self.records.run(self._store_batch, batch, where)
        point("add:stored")
        self._sync([*winners, *result.superseded_stored], keys)
        bar.update(len(batch))
        return result

    def _store_batch(self, connection, batch: Sequence[Edit], where: Mapping[str, str]) -> BatchResult:
        stored = self.records.existing(connection, self.name, [e.id for e in batch])  # another writer's, meanwhile
        self._refuse_reused_ids([e for e in batch if e.id in stored], stored, where)
        fresh = [e for e in batch if e.id not in stored]
        winners = newest_per_slot(fresh)
        new_ids = {e.id for e in winners.values()}
        losers = [r.edit for r in self.records.current_in(connection, self.name, list(winners))
                  if r.edit.id not in new_ids]
        for old in losers:  # history first: the unique index allows one current edit per slot at every statement
            self.records.set_status(connection, self.name, old.id, SUPERSEDED, winners[old.supersede_key].id)
        self.records.insert(connection, self.name, [
            (e, CURRENT, "") if winners[e.supersede_key] is e else (e, SUPERSEDED, winners[e.supersede_key].id)
            for e in fresh])
        self.records.enqueue(connection, self.name, [*new_ids, *(old.id for old in losers)])
        return BatchResult(tuple(e.id for e in fresh), len(batch) - len(fresh),
                           len(losers) + len(fresh) - len(winners), tuple(old.id for old in losers))

    def delete(self, edit_id: str) -> bool:
        """Remove an edit and its keys. Returns False when there was no such edit."""
        removed = self.records.run(self._remove_record, edit_id)
        point("delete:removed")
        if removed:
            self._sync([edit_id])
        return removed

    def _remove_record(self, connection, edit_id: str) -> bool:
        removed = self.records.remove(connection, self.name, edit_id)
        if removed:
            self.records.enqueue(connection, self.name, [edit_id])
        return removed

    def restore(self, edit_id: str) -> StoredEdit:
        """Make a superseded edit current again; the edit currently holding its slot becomes history."""
        touched = self.records.run(self._restore_record, edit_id)
        point("restore:stored")
        self._sync(touched)
        return self.get(edit_id)

    def _restore_record(self, connection, edit_id: str) -> list[str]:
        found = self.records.existing(connection, self.name, [edit_id])
        if edit_id not in found:
            raise NotFoundError(f"no edit with id {edit_id}")
        slot = found[edit_id].edit.supersede_key
        holders = [r.edit.id for r in self.records.current_in(connection, self.name, [slot]) if r.edit.id != edit_id]
        for holder in holders:
            self.records.set_status(connection, self.name, holder, SUPERSEDED, edit_id)
        self.records.set_status(connection, self.name, edit_id, CURRENT)
        self.records.enqueue(connection, self.name, [edit_id, *holders])
        return [edit_id, *holders]

    def clear(self) -> None:
        """Remove every edit: the records in one transaction, then the key index (a crash in between is finished at
        the next open, which sees the clearing flag)."""
        self.records.run(self._clear_records)
        point("clear:records")
        self._drop_index()

    def _clear_records(self, connection) -> None:
        self.records.put_setting(connection, self.name, "clearing", "1")
        self.records.remove_all(connection, self.name)

    def _drop_index(self) -> None:
        if self._index_if_free() is None:
            return  # the lease holder finishes the clear (`repair`)
        self._index.drop()
        point("clear:index")
        self.records.run(self.records.put_setting, self.name, "clearing", None)

    # ------------------------------------------------------------ keeping the key index in step

    def _sync(self, edit_ids: Sequence[str], keys: Sequence[Key] = ()) -> None:
        """Make these edits' keys match their records: every key of a current edit present (from `keys` where
        given, else embedded now), no key of any other; then dequeue them. Runs in a records transaction that
        serializes it with every other sync of the same edits, so the last to run sees the last status. Without the
        index (another process holds its lease) they stay queued for the holder."""
        if not edit_ids or self._index_if_free() is None:
            return
        self.records.run(self._sync_in, list(dict.fromkeys(edit_ids)), {k[0]: k for k in keys})
        point("sync:done")

    def _sync_in(self, connection, edit_ids: list[str], keys: dict[str, Key]) -> None:
        self.records.lock_ids(connection, self.name, edit_ids)
        versions = self.records.queued(connection, self.name, edit_ids)
        found = self.records.existing(connection, self.name, edit_ids)
        stale = [i for i in edit_ids if i not in found or found[i].status != CURRENT]
        if stale:
            self.index.remove_edits(stale)
            point("sync:removed")
        self._complete_keys([found[i].edit for i in edit_ids if i not in stale], keys)
        self.records.dequeue(connection, self.name, versions)

    def _complete_keys(self, edits: Sequence[Edit], keys: dict[str, Key]) -> None:
        wanted = {key_id: edit for edit in edits for key_id in key_ids(edit)}
        missing = set(wanted) - self.index.present(list(wanted))
        incomplete = list({wanted[key_id].id: wanted[key_id] for key_id in sorted(missing)}.values())
        if not incomplete:
            return
        given = [keys[k] for e in incomplete for k in key_ids(e) if k in keys]
        if len(given) < len(missing):
            given = self._embedded_keys(incomplete)
        self.index.upsert(given)
        point("sync:keys")

    def repair(self, quiet: bool = False) -> int:
        """Bring the key index up to the records: finish a clear, then every queued edit (what killed writers
        left, and what processes without the index lease wrote). Returns how many edits it synced."""
        self.index  # noqa: B018 - takes the lease where the store has one
        if not quiet and self.records.setting(self.name, "rebuilding"):
            log.warning("lte: a rebuild of the key index of %s was interrupted; some current edits may have no "
                        "keys until `lte edit reindex` is run again", self.name)
        if self.records.setting(self.name, "clearing"):
            if not quiet:
                log.warning("lte: finishing a clear of edit set %s that an earlier process left half done",
                            self.name)
            self._drop_index()
        synced = 0
        while True:
            with self.records.transaction() as connection:
                queued = list(self.records.queued(connection, self.name, limit=1000))
            if not queued:
                return synced
            if not synced and not quiet:
                log.warning("lte: finishing %d edit(s) of %s that an earlier writer left half written",
                            self.records.queue_size(self.name), self.name)
            self._sync(queued)
            synced += len(queued)

    def verify(self) -> StoreCheck:
        """Check the invariants over the whole store: every current edit has all its keys, no key belongs to an
        edit that is not current, one current edit per slot, nothing queued. Reads everything: O(store)."""
        current: dict[str, list[str]] = {}
        page = self.records.page(self.name, limit=10_000)
        while page:
            current.update((r.edit.id, key_ids(r.edit)) for r in page)
            page = self.records.page(self.name, limit=10_000, after=page[-1].seq)
        present = self.index.present([k for ids in current.values() for k in ids])
        indexed = set().union(*self.index.edit_ids())
        return StoreCheck(len(current), len(present),
                          tuple(sorted(i for i, ids in current.items() if not set(ids) <= present)),
                          tuple(sorted(indexed - set(current))),
                          tuple(self.records.slots_with_several_current(self.name)),
                          self.records.queue_size(self.name))

    def rebuild_index(self, batch_size: int = 256, progress: bool = True) -> int:
        """Drop the key index and embed every current edit's keys again from the records. Returns the edits."""
        self.records.run(self.records.put_setting, self.name, "rebuilding", "1")
        self.index.drop()
        done, after = 0, 0
        with tqdm(total=self.count(), desc="rebuilding the key index", unit="edit", disable=not progress) as bar:
            while page := self.records.current_ids(self.name, after, batch_size):
                edits = [r.edit for r in self.records.get(self.name, [i for _, i in page]).values()]
                keys = self._embedded_keys(edits)
                self.index.upsert(keys)
                after, done = page[-1][0], done + len(page)
                bar.update(len(page))
        self.records.run(self.records.put_setting, self.name, "rebuilding", None)
        return done

    # ------------------------------------------------------------ the layout before the records database

    def _migrate(self) -> None:
        """A store made when records lived in Chroma (`<name>-edits`): copy them into the records database in one
        transaction, then drop that collection (a crash in between copies nothing twice: the copy is skipped when
        the records are there)."""
        legacy = f"{self.name}-edits"
        try:
            old = self.client.get_collection(legacy)
        except Exception:  # Chroma's not-found error differs between versions
            return
        if not self.records.count(self.name, history=True):
            rows = []
            for offset in range(0, old.count(), 5000):
                rows += old.get(include=["metadatas"], limit=5000, offset=offset)["metadatas"]
            rows.sort(key=lambda m: m["seq"])
            settings = {k: v for k, v in (old.metadata or {}).items() if k in ("gate", "scope")}
            self.records.run(self._copy_legacy, rows, settings)
            if hasattr(self, "gate"):  # an embedded store moved after its settings were read: read them again
                self.gate = self.gate if self.gate is not UNFITTED else self.saved_gate() or UNFITTED
                self.scope = self.scope or self.saved_scope()
            log.warning("lte: moved %d edit records of %s from Chroma into the records database %s", len(rows),
                        self.name, self.records.describe())
        self.client.delete_collection(legacy)
        journal = self.directory / OLD_JOURNAL if self.directory else None
        if journal is not None and journal.is_file():
            for edit_id in journal.read_text(encoding="utf-8").split():
                self.delete(edit_id)
            journal.unlink()

    def _copy_legacy(self, connection, rows: list[dict], settings: dict[str, str]) -> None:
        self.records.insert(connection, self.name, [(Edit.from_dict(json.loads(m["edit"])), m["status"],
                                                     m.get("superseded_by", "")) for m in rows])
        for name, value in settings.items():
            self.records.put_setting(connection, self.name, name, value)

    # ------------------------------------------------------------ reading

    def get(self, edit_id: str) -> StoredEdit | None:
        found = self.records.get(self.name, [edit_id]).get(edit_id)
        return stored(found) if found else None

    def list(self, history: bool = False, offset: int = 0, limit: int | None = None,
             after: int | None = None) -> list[StoredEdit]:
        """Current edits (and superseded ones with history=True), oldest first; `limit` of them from `offset`,
        or after the edit whose `seq` is `after` (O(limit) wherever the page is: pass the last `seq` of a page to
        get the next)."""
        return [stored(r) for r in self.records.page(self.name, history, offset, limit, after)]

    def count(self, history: bool = False) -> int:
        return self.records.count(self.name, history)

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
        self._catch_up()
        queries = [nfc(q) for q in queries]  # as the edits are stored: one spelling per text
        # No count() to cap n_results: Chroma returns fewer rows when it has fewer, and count() scans the
        # collection (13 ms at 200k keys, more than the query itself).
        result = self.keys.query(query_embeddings=self.embedder.encode(queries).tolist(), n_results=max(4 * k, 8),
                                 include=["metadatas", "distances"])
        best_per_query = [self._best_edits(m, d, k) for m, d in zip(result["metadatas"], result["distances"])]
        records = self._current({edit_id for best in best_per_query for edit_id, _, _ in best})
        return [[(records[i], cosine, key) for i, cosine, key in best if i in records] for best in best_per_query]

    def relevance(self, queries: Sequence[str], edits: Sequence[Edit], cosines: Sequence[float]) -> list[float]:
        """The probability that each edit answers its query: the scope model's, else the gate's."""
        if not queries:
            return []
        queries = [nfc(q) for q in queries]
        if self.scope is not None:
            pairs = [(q, e.prompt) for q, e in zip(queries, edits)]
            return [round(float(p), 4) for p in self.scope.probabilities(pairs, [e.subject for e in edits])]
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

    def _catch_up(self) -> None:
        """An embedded store's lease holder embeds what other processes wrote since (one indexed count when
        nothing is queued)."""
        if self.directory is not None and (self.records.queue_size(self.name)
                                           or self.records.setting(self.name, "clearing")):
            self.repair(quiet=True)

    def _current(self, ids: set[str]) -> dict[str, Edit]:
        """The edits among `ids` that the records hold as current (a key is briefly stale while a write syncs)."""
        if not ids:
            return {}
        return {i: r.edit for i, r in self.records.get(self.name, sorted(ids)).items() if r.status == CURRENT}

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
        self.records.run(self.records.put_setting, self.name, "gate", gate.to_json())

    def set_scope(self, scope: ScopeModel | None) -> None:
        """Use `scope` (None: the gate) and record its folder with the store, for every later open."""
        self.scope = scope
        self.records.run(self.records.put_setting, self.name, "scope",
                         str(scope.path.resolve()) if scope is not None else None)

    def saved_scope(self) -> ScopeModel | None:
        path = self.records.setting(self.name, "scope")
        if not path:
            return None
        if not (Path(path) / "scope.json").is_file():
            log.warning("lte: the store's scope model %s is missing; the relevance gate decides instead", path)
            return None
        return ScopeModel(path)

    def saved_gate(self) -> Gate | None:
        saved = self.records.setting(self.name, "gate")
        return Gate.from_json(saved) if saved else None

    # ------------------------------------------------------------ export

    def export(self, path: Path, history: bool = False, page: int = 10_000) -> int:
        """Write edits as JSONL (atomically), a page at a time, and return how many."""
        written, after = 0, None
        with files.atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
            while rows := self.list(history, limit=page, after=after):
                handle.writelines(json.dumps(item.edit.to_dict(), ensure_ascii=False) + "\n" for item in rows)
                written, after = written + len(rows), rows[-1].seq
        return written


def stored(record: Record) -> StoredEdit:
    return StoredEdit(record.edit, record.status, record.superseded_by, record.seq)


def newest_per_slot(edits: Sequence[Edit]) -> dict[str, Edit]:
    """The edit that holds each (subject, relation) slot: the last one in input order."""
    return {e.supersede_key: e for e in edits}


def fit_gate_on(cases: Sequence[EditCase], embedder: Embedder) -> Gate:
    """A relevance gate fitted on training cases: each case's own and paraphrase prompts should pass its edit,
    its locality prompts should not. Cosines are taken over the same retrieval keys the store indexes."""
    return gates.fit_gate(gates.gate_pairs(cases), embedder.encode, lambda e: [t for _, t in key_texts(e)],
                          embedder.name)
