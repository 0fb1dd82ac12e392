"""The cross-process write lock of an embedded store's key index.

An embedded Chroma (a `PersistentClient` on a folder) may be written by one process at a time, so every write to
the key index of an embedded store holds a file lock in the store's folder (`filelock`); a writer that finds it
taken says so and waits. The records need no such lock: their database serializes its own transactions
(`retrieval.records`). A Chroma server takes concurrent writes itself, so a store on one has no lock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from lte.core.errors import LTEError

log = logging.getLogger(__name__)

LOCK_FILE = ".lte-write.lock"


class StoreBusyError(LTEError):
    """Another process kept the store's write lock for longer than we wait."""


class WriteLock:
    """Held around every key-index write of an embedded store; re-entrant in one process (nested writes are fine).
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
