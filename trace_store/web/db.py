"""The workbench's read-only connections to the store's database.

The workbench is a process of its own beside the ingest (``edge-agent trace-store``): SQLite
in WAL mode lets readers run while the store writes (a reader sees the last commit before
its query started); PostgreSQL connections are opened read-only. A ``Storage`` is used by one
thread at a time, so requests borrow one from a small pool and give it back; a connection
that failed (PostgreSQL restarted) is dropped and the next request opens a fresh one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

from trace_store.storage import Storage, StorageError, StorageUnavailable, open_storage

POOL_SIZE = 4
WAIT_SECONDS = 30.0  # a request waits this long for a free connection, then gets a 503


class Pool:
    def __init__(self, db: str, size: int = POOL_SIZE) -> None:
        self.db = db
        self._idle: queue.LifoQueue[Storage] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._all: list[Storage] = []

    def check(self) -> str:
        """Open one connection now (a bad path or URL fails at start-up, not at the first
        request); returns where the data is, for the log."""
        with self.borrow() as storage:
            return storage.location

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Storage]:
        if not self._slots.acquire(timeout=WAIT_SECONDS):
            raise StorageUnavailable("every database connection is busy; try again")
        storage: Storage | None = None
        try:
            try:
                storage = self._idle.get_nowait()
            except queue.Empty:
                storage = open_storage(self.db, read_only=True)
                with self._lock:
                    self._all.append(storage)
            yield storage
        except StorageError:
            if storage is not None:
                self._discard(storage)
                storage = None
            raise
        finally:
            if storage is not None:
                self._idle.put(storage)
            self._slots.release()

    def _discard(self, storage: Storage) -> None:
        with self._lock:
            if storage in self._all:
                self._all.remove(storage)
        with contextlib.suppress(Exception):
            storage.close()

    def close(self) -> None:
        with self._lock:
            every, self._all = self._all, []
        for storage in every:
            with contextlib.suppress(Exception):
                storage.close()
