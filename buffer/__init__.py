"""The local durable journal (SQLite, WAL)."""

from buffer.sqlite import SqliteBuffer, StoredRecord

__all__ = ["SqliteBuffer", "StoredRecord"]
