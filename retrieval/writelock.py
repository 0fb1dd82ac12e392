"""The cross-process write lock of an embedded edit store, and the journal that makes `delete` crash-safe.

Two `lte edit add` processes, or one beside `lte serve`, must not interleave their writes (a new store's tables
created twice, two current edits for one fact). Every public write of an embedded store holds a file lock in the
store's directory (`filelock`); a writer that finds it taken says so and waits. A Chroma server is shared by
design and has no such lock: README says what several writers may expect there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from lte.core import files
from lte.core.errors import LTEError

log = logging.getLogger(__name__)

LOCK_FILE = ".lte-write.lock"
JOURNAL_FILE = ".lte-pending-delete"


class StoreBusyError(LTEError):
    """Another process kept the store's write lock for longer than we wait."""


class WriteLock:
    """Held around every write of an embedded store; re-entrant in one process (nested writes are fine).
    `directory=None` (an in-memory store, a Chroma server): no lock."""

    def __init__(self, directory: Path | None, wait_s: float = 600.0):
        self.directory, self.wait_s = directory, wait_s
        # thread_local=False: the store's own writer thread works under the caller's hold
        self._lock = FileLock(str(directory / LOCK_FILE), thread_local=False) if directory else None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            log.warning("lte: waiting for another lte process that is writing to the store at %s", self.directory)
            try:
                self._lock.acquire(timeout=self.wait_s)
            except Timeout:
                raise StoreBusyError(f"{self.directory}: another lte process has held the store's write lock for "
                                     f"over {self.wait_s:.0f} s; try again when it is done") from None
        try:
            yield
        finally:
            self._lock.release()


class DeleteJournal:
    """The id being deleted, written before the first of a delete's two writes and removed after the second: a
    crash in between leaves the id here, and the next open finishes the delete."""

    def __init__(self, directory: Path | None):
        self.path = directory / JOURNAL_FILE if directory else None

    @contextlib.contextmanager
    def deleting(self, edit_id: str) -> Iterator[None]:
        if self.path is None:
            yield
            return
        files.write_text(self.path, edit_id + "\n")
        yield
        self.path.unlink(missing_ok=True)

    def pending(self) -> list[str]:
        if self.path is None or not self.path.is_file():
            return []
        return [line for line in self.path.read_text(encoding="utf-8").split() if line]

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
