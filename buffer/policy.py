"""What the journal keeps when storage runs short: the bounds on telemetry and the disk
watermarks. Plain values; ``BufferConfig`` in ``buffer/config.py`` is their YAML form
(``SqliteBuffer.from_config`` maps one to the other, a test checks the defaults agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kernel.model import TELEMETRY_KINDS

GiB = 1 << 30
MiB = 1 << 20

TELEMETRY = TELEMETRY_KINDS
"""The one retention class that may be evicted (oldest first, counted) under storage pressure:
continuous telemetry (``readings``, and ``reading`` rows an older version left in the journal).
Every other kind, including kinds added later, is trace data and is never evicted, so a new kind
is protected until someone decides otherwise rather than the other way round."""

TELEMETRY_SQL = "kind IN ({})".format(", ".join(f"'{k.value}'" for k in sorted(TELEMETRY)))
"""The same class as the journal's SQL names it (derived, so the two cannot disagree)."""


@dataclass(frozen=True, slots=True)
class TelemetryBounds:
    """How much telemetry the journal holds at most; ``None`` leaves a bound off.

    Past a bound the oldest telemetry rows go first, down to 1% under the bound, so a journal
    sitting at its bound deletes in chunks rather than a few rows per commit.
    """

    max_rows: int | None = 2_000_000
    max_bytes: int | None = GiB  # sum of the record bodies (the wire JSON)
    max_age: float | None = 7 * 24 * 3600.0  # seconds since the row was committed


@dataclass(frozen=True, slots=True)
class DiskWatermarks:
    """Free space of the journal's filesystem, checked every ``check_interval`` seconds.

    Below ``warn_free_bytes``: alarm ``disk_low``, nothing else changes. Below
    ``critical_free_bytes``: alarm ``disk_critical``, new readings are refused, and telemetry is
    evicted until the journal holds ``critical_free_bytes`` of free pages that only trace
    records can use (SQLite reuses freed pages, so that room cannot be taken by others).
    """

    warn_free_bytes: int = 2 * GiB
    critical_free_bytes: int = 256 * MiB
    check_interval: float = 10.0


class DiskUsage(Protocol):
    """What ``shutil.disk_usage`` returns, as far as the journal cares."""

    @property
    def free(self) -> int: ...
