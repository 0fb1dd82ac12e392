"""The index lease of an embedded store: one process at a time opens its key index.

An embedded Chroma (a `PersistentClient` on a folder) may be used by one process at a time: each process keeps its
own copy of the vector index in memory, so a second one writing beside it leaves the folder in a state no process
can read (four `lte edit add` processes taking turns under a write lock left a store whose key count never
returned). So the first process that needs an embedded store's keys — to search, or to write them — takes this
lease (a file lock in the store's folder, `filelock`) and holds it while it keeps the store open. Another process
still writes edits, into the records (their database takes concurrent writers) and the index queue; the lease
holder embeds their keys before its next search (`EditStore.repair`), or the next process to open the store does.
A process that must search while another holds the lease waits for it, and says so. A Chroma server takes many
processes itself, so a store on one has no lease.
"""

from __future__ import annotations

import logging
from pathlib import Path

from filelock import FileLock, Timeout

from lte.core.errors import LTEError

log = logging.getLogger(__name__)

LEASE_FILE = ".lte-index.lock"


class StoreBusyError(LTEError):
    """Another process kept the store's key index for longer than we wait."""


class IndexLease:
    """The lease on an embedded store's key index (`directory=None`: a store that needs none, always held)."""

    def __init__(self, directory: Path | None, wait_s: float = 600.0):
        self.directory, self.wait_s = directory, wait_s
        # thread_local=False: the store's writer thread uses the index under its owner's lease. is_singleton: every
        # store of one process on this folder shares one lock (Chroma shares one client per folder in a process),
        # counting its holders
        self._lock = (FileLock(str(directory / LEASE_FILE), thread_local=False, is_singleton=True)
                      if directory else None)
        self._mine = False

    @property
    def held(self) -> bool:
        return self._lock is None or self._mine

    def try_take(self) -> bool:
        """Take the lease if it is free now (or this process has it already); True when this store holds it."""
        if self.held:
            return True
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        self._mine = True
        return True

    def take(self) -> None:
        """Take the lease, waiting (and saying so) while another process holds it."""
        if self.try_take():
            return
        log.warning("lte: waiting for another lte process that has the store at %s open (an `lte serve`? ask "
                    "through its API, or keep the keys on a Chroma server with --chroma-url)", self.directory)
        try:
            self._lock.acquire(timeout=self.wait_s)
            self._mine = True
        except Timeout:
            raise StoreBusyError(f"{self.directory}: another lte process has kept the store open for over "
                                 f"{self.wait_s:.0f} s; ask through that process (lte serve's API), or use a "
                                 "Chroma server (--chroma-url) for several processes") from None

    def release(self) -> None:
        if self._lock is not None and self._mine:
            self._lock.release()
            self._mine = False
