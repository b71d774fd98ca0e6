"""The local durable journal (SQLite, WAL)."""

from buffer.policy import DiskWatermarks, TelemetryBounds
from buffer.sqlite import SqliteBuffer, StoredRecord

__all__ = ["DiskWatermarks", "SqliteBuffer", "StoredRecord", "TelemetryBounds"]
