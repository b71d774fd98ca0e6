"""The local durable journal (SQLite, WAL).

The daemon and sync depend on the ``Journal`` protocol (``journal.py``); ``SqliteBuffer``
(``sqlite.py``) implements it, split by job:

- ``sqlite``: the async facade the event loop owns (its gauges, waiters, the API);
- ``handoff``: the only state that crosses threads (``Inbox`` under a lock, ``Outbox`` posted);
- ``writer``: ``JournalThread``, the connection's one owner: batching, each commit's
  transaction, a journal that cannot grow;
- ``seqs``: opening, where numbering starts, a damaged journal replaced, salvage bookkeeping;
- ``identity``: the journal's id and its epochs (one per opening), what keeps keys unique;
- ``schema``: the tables, connection settings, upgrade of old journals;
- ``retention``: telemetry totals, bounds and eviction, counted and reported;
- ``disk``: free-space watermarks and the WAL checkpoint;
- ``state``: station state and part serials, written with their records;
- ``files`` (lock, damage check, set aside), ``policy`` (bounds and watermarks), ``config``
  (the YAML section), ``salvage`` (the ``edge-agent buffer salvage`` command).

Everything in ``writer``, ``seqs``, ``identity``, ``schema``, ``retention``, ``disk`` and
``state`` runs on the journal's thread.
"""

from buffer.journal import Journal, StoredRecord
from buffer.policy import DiskWatermarks, TelemetryBounds
from buffer.sqlite import SqliteBuffer

__all__ = ["DiskWatermarks", "Journal", "SqliteBuffer", "StoredRecord", "TelemetryBounds"]
