"""The edit records: the store's source of truth, in a transactional database (SQLAlchemy Core).

SQLite for an embedded store (a file in the store's folder) and for one machine; PostgreSQL (`postgresql://...`)
for a deployment where several `lte serve` replicas and writers share one store. Three tables, each row tagged with
its edit set (`collection`):
- `lte_edits`: one row per edit: id, slot (subject + relation), status, the edit that superseded it, the edit as
  JSON, and `seq`, the order edits were stored in. A unique index on (collection, slot) over current rows lets the
  database itself refuse a second current edit for a fact: two writers that supersede the same edit at once cannot
  both win; the loser's transaction fails and is retried, and then supersedes the winner;
- `lte_index_queue`: edits whose retrieval keys in the key index (Chroma) may not match their status yet. A write
  enqueues what it touches in the same transaction that changes it, and dequeues after the keys follow; a writer
  that dies in between leaves its rows here, and the next open finishes them (`EditStore.repair`);
- `lte_settings`: per-collection values (the relevance gate, the scope model's folder, the clearing flag).

Every write is one transaction. On SQLite a write transaction starts with BEGIN IMMEDIATE, so writers in several
processes queue for the database's write lock (busy timeout: `BUSY_TIMEOUT_S`) instead of failing when a read
transaction tries to become a write one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from lte.core.errors import LTEError
from lte.core.schema import Edit

log = logging.getLogger(__name__)

CURRENT, SUPERSEDED = "current", "superseded"
BUSY_TIMEOUT_S = 120.0  # SQLite: how long a writer waits for another's transaction (4 writers of 300 edits: < 10 s)
RETRIES = 30  # a transaction that lost a race for a slot (unique index) or a serialization check is run again
SQL_CHUNK = 500  # ids per IN (...) list: SQLite's default limit on bound parameters is far above it

metadata = sa.MetaData()
edits_table = sa.Table(
    "lte_edits", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("collection", sa.String(200), nullable=False),
    sa.Column("id", sa.String(200), nullable=False),
    sa.Column("slot", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("superseded_by", sa.String(200), nullable=False, server_default=""),
    sa.Column("payload", sa.Text, nullable=False),
    sa.UniqueConstraint("collection", "id", name="lte_edits_id"),
    sa.Index("lte_edits_one_current", "collection", "slot", unique=True,
             sqlite_where=sa.text("status = 'current'"), postgresql_where=sa.text("status = 'current'")),
    sa.Index("lte_edits_listing", "collection", "status", "seq"),
)
queue_table = sa.Table(
    "lte_index_queue", metadata,
    sa.Column("collection", sa.String(200), primary_key=True),
    sa.Column("edit_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
)
settings_table = sa.Table(
    "lte_settings", metadata,
    sa.Column("collection", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class RecordsUnavailableError(LTEError):
    """The records database cannot be reached or keeps refusing a transaction."""


@dataclass(frozen=True)
class Record:
    edit: Edit
    status: str
    superseded_by: str
    seq: int


def page_query(collection: str, history: bool, offset: int, limit: int | None, after: int | None) -> sa.Select:
    query = sa.select(edits_table).where(edits_table.c.collection == collection)
    if not history:
        query = query.where(edits_table.c.status == CURRENT)
    if after is not None:
        query = query.where(edits_table.c.seq > after)
    query = query.order_by(edits_table.c.seq).offset(offset)
    return query if limit is None else query.limit(limit)


def sqlite_url(path) -> str:
    return f"sqlite:///{path}"


def create_engine(url: str) -> Engine:
    """An engine for `url`. SQLite gets a busy timeout, WAL mode (readers never wait for a writer) and BEGIN
    IMMEDIATE for write transactions (SQLAlchemy's documented recipe for pysqlite's own transaction handling)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(with_driver(url), pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut may lose the last commits,
        # never corrupt the database; a killed process loses nothing committed

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(WRITE) else "BEGIN")

    return engine


def with_driver(url: str) -> str:
    """postgresql://... means psycopg 3 (the `postgres` extra), not SQLAlchemy's default psycopg2."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


WRITE = "lte_write"  # execution option of write transactions


def retryable(error: DBAPIError) -> bool:
    """A lost race (unique index), a serialization failure or a deadlock: running the transaction again settles it."""
    if isinstance(error, IntegrityError):
        return True
    code = getattr(getattr(error, "orig", None), "sqlstate", None)
    return code in ("40001", "40P01") or (isinstance(error, OperationalError) and "locked" in str(error).lower())


class RecordDB:
    """The records of every edit set in one database. Thread-safe (SQLAlchemy's pool)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url)
        self.writer = self.engine.execution_options(**{WRITE: True})
        self.postgres = self.engine.dialect.name == "postgresql"
        self._create_tables()

    def _create_tables(self) -> None:
        """The tables, if missing. Several processes opening a new store at once race here: SQLite answers the
        losers 'database is locked' (switching to WAL takes the file whole) or 'already exists', PostgreSQL a
        unique violation; each tries again until the tables are there."""
        for attempt in range(RETRIES):
            try:
                metadata.create_all(self.engine)
                return
            except (IntegrityError, OperationalError) as error:
                text = str(error).lower()
                if attempt == RETRIES - 1 or not ("locked" in text or "already exists" in text
                                                  or isinstance(error, IntegrityError)):
                    raise RecordsUnavailableError(f"cannot open the edit records at {self.describe()}: "
                                                  f"{error.orig}") from None
                time.sleep(random.uniform(0.05, 0.2))

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ transactions

    @classmethod
    def temporary(cls) -> RecordDB:
        """A database in a temporary file, removed when the object goes: the records of an in-memory store."""
        folder = tempfile.mkdtemp(prefix="lte-records-")
        db = cls(sqlite_url(Path(folder) / "records.sqlite3"))
        weakref.finalize(db, _remove, db.engine, folder)
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction (on SQLite: it holds the database's write lock from its first statement)."""
        with self.writer.begin() as connection:
            yield connection

    def run(self, work, *args):
        """`work(connection, *args)` in one transaction, run again (with a short random wait) when it lost a race."""
        for attempt in range(RETRIES):
            try:
                with self.transaction() as connection:
                    return work(connection, *args)
            except DBAPIError as error:
                if not retryable(error) or attempt == RETRIES - 1:
                    if isinstance(error, OperationalError):
                        raise RecordsUnavailableError(f"the edit records at {self.describe()}: {error.orig}") from None
                    raise
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def lock_ids(self, connection: Connection, collection: str, ids: Sequence[str]) -> None:
        """Serialize work on these edits' keys across processes for the rest of the transaction: PostgreSQL
        advisory locks (in a fixed order, so two lockers never deadlock); SQLite's IMMEDIATE transaction already
        holds the whole database."""
        if self.postgres:
            for edit_id in sorted(set(ids)):
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                                   {"key": f"{collection}\x1f{edit_id}"})

    # ------------------------------------------------------------ reading

    def existing(self, connection: Connection, collection: str, ids: Sequence[str]) -> dict[str, Record]:
        found: dict[str, Record] = {}
        for start in range(0, len(ids), SQL_CHUNK):
            rows = connection.execute(sa.select(edits_table).where(
                edits_table.c.collection == collection, edits_table.c.id.in_(list(ids[start:start + SQL_CHUNK]))))
            found.update((row.id, to_record(row)) for row in rows)
        return found

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, Record]:
        with self.engine.connect() as connection:
            return self.existing(connection, collection, list(ids))

    def current_in(self, connection: Connection, collection: str, slots: Sequence[str]) -> list[Record]:
        rows = []
        for start in range(0, len(slots), SQL_CHUNK):
            rows += connection.execute(sa.select(edits_table).where(
                edits_table.c.collection == collection, edits_table.c.status == CURRENT,
                edits_table.c.slot.in_(list(slots[start:start + SQL_CHUNK])))).all()
        return [to_record(row) for row in rows]

    def page(self, collection: str, history: bool = False, offset: int = 0, limit: int | None = None,
             after: int | None = None) -> list[Record]:
        """Current edits (all with `history`), oldest first: `limit` rows from `offset`, or, with `after` (a seq
        from an earlier page), the rows after it. Both read the listing index; `after` seeks to the page, so it
        costs O(limit) anywhere in the store, where `offset` steps over the rows before it."""
        with self.engine.connect() as connection:
            return [to_record(row) for row in connection.execute(page_query(collection, history, offset, limit,
                                                                            after))]

    def count(self, collection: str, history: bool = False) -> int:
        query = sa.select(sa.func.count()).select_from(edits_table).where(edits_table.c.collection == collection)
        if not history:
            query = query.where(edits_table.c.status == CURRENT)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def current_ids(self, collection: str, after_seq: int = 0, limit: int = 10_000) -> list[tuple[int, str]]:
        """(seq, id) of current edits in seq order after `after_seq`: the pages `repair` and `rebuild` walk."""
        query = (sa.select(edits_table.c.seq, edits_table.c.id)
                 .where(edits_table.c.collection == collection, edits_table.c.status == CURRENT,
                        edits_table.c.seq > after_seq).order_by(edits_table.c.seq).limit(limit))
        with self.engine.connect() as connection:
            return [(row.seq, row.id) for row in connection.execute(query)]

    def slots_with_several_current(self, collection: str) -> list[str]:
        query = (sa.select(edits_table.c.slot).where(edits_table.c.collection == collection,
                                                     edits_table.c.status == CURRENT)
                 .group_by(edits_table.c.slot).having(sa.func.count() > 1))
        with self.engine.connect() as connection:
            return [row.slot for row in connection.execute(query)]

    # ------------------------------------------------------------ writing (inside a transaction)

    def insert(self, connection: Connection, collection: str, rows: Sequence[tuple[Edit, str, str]]) -> None:
        """Insert (edit, status, superseded_by) rows in order; `seq` follows that order."""
        if rows:
            connection.execute(edits_table.insert(), [
                {"collection": collection, "id": edit.id, "slot": edit.supersede_key, "status": status,
                 "superseded_by": by, "payload": json.dumps(edit.to_dict(), ensure_ascii=False)}
                for edit, status, by in rows])

    def set_status(self, connection: Connection, collection: str, edit_id: str, status: str, by: str = "") -> None:
        connection.execute(edits_table.update().where(edits_table.c.collection == collection,
                                                      edits_table.c.id == edit_id)
                           .values(status=status, superseded_by=by))

    def remove(self, connection: Connection, collection: str, edit_id: str) -> bool:
        result = connection.execute(edits_table.delete().where(edits_table.c.collection == collection,
                                                               edits_table.c.id == edit_id))
        return result.rowcount > 0

    def remove_all(self, connection: Connection, collection: str) -> None:
        connection.execute(edits_table.delete().where(edits_table.c.collection == collection))
        connection.execute(queue_table.delete().where(queue_table.c.collection == collection))

    # ------------------------------------------------------------ the index queue

    def enqueue(self, connection: Connection, collection: str, ids: Sequence[str]) -> None:
        """Mark edits whose keys must follow their status; a mark already there gets a new version, so a repair
        that read the old one leaves it for the writer that set the new one. One statement for all the ids."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return
        insert = (postgresql_insert if self.postgres else sqlite_insert)(queue_table)
        statement = insert.on_conflict_do_update(index_elements=[queue_table.c.collection, queue_table.c.edit_id],
                                                 set_={"version": queue_table.c.version + 1})
        connection.execute(statement, [{"collection": collection, "edit_id": i, "version": 0} for i in ids])

    def queued(self, connection: Connection, collection: str, ids: Sequence[str] | None = None,
               limit: int = 1000) -> dict[str, int]:
        """{edit id: version} of queued edits: of `ids`, or the first `limit` of the collection."""
        query = sa.select(queue_table.c.edit_id, queue_table.c.version).where(queue_table.c.collection == collection)
        if ids is None:
            return {row.edit_id: row.version for row in connection.execute(query.limit(limit))}
        found: dict[str, int] = {}
        for start in range(0, len(ids), SQL_CHUNK):
            rows = connection.execute(query.where(queue_table.c.edit_id.in_(list(ids[start:start + SQL_CHUNK]))))
            found.update((row.edit_id, row.version) for row in rows)
        return found

    def dequeue(self, connection: Connection, collection: str, versions: dict[str, int]) -> None:
        if versions:
            connection.execute(queue_table.delete().where(
                queue_table.c.collection == collection, queue_table.c.edit_id == sa.bindparam("edit"),
                queue_table.c.version == sa.bindparam("seen")),
                [{"edit": i, "seen": v} for i, v in versions.items()])

    def queue_size(self, collection: str) -> int:
        query = sa.select(sa.func.count()).select_from(queue_table).where(queue_table.c.collection == collection)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    # ------------------------------------------------------------ settings

    def setting(self, collection: str, name: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(sa.select(settings_table.c.value).where(
                settings_table.c.collection == collection, settings_table.c.name == name)).scalar_one_or_none()

    def put_setting(self, connection: Connection, collection: str, name: str, value: str | None) -> None:
        connection.execute(settings_table.delete().where(settings_table.c.collection == collection,
                                                         settings_table.c.name == name))
        if value is not None:
            connection.execute(settings_table.insert().values(collection=collection, name=name, value=value))


def _remove(engine: Engine, folder: str) -> None:
    engine.dispose()
    shutil.rmtree(folder, ignore_errors=True)


def to_record(row) -> Record:
    return Record(Edit.from_dict(json.loads(row.payload)), row.status, row.superseded_by, row.seq)
