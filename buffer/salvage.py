"""``edge-agent buffer salvage``: copy what can still be read out of a damaged journal into the
live one, as new records (see docs/wire-format.md, "Salvaged records", and docs/buffer.md).

The damaged file is only read (opened read-only). Its records are walked in seq order through
SQLite's own b-tree; where a page cannot be read, the walk probes forward for the next seq it
can reach, so one bad page costs the rows on it, not the rest of the file. Every seq in a
skipped interval is reported: those are the records that may be lost (some of them may never
have existed, or were delivered and deleted before the damage).

Each salvaged record is appended with a new seq (seqs keep growing), its body without its old
``seq`` and with ``"salvaged": {"seq": <old seq>, "journal": "<damaged file name>", "epoch":
"<old epoch>"}`` (``epoch``: the journal epoch it was made in, the other half of its key; left
out when the damaged file's epochs cannot be read). The live
journal remembers (file name, old seq) of every copy in the same transaction as the copy, so a
second run, or a run after a crash, copies nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buffer.config import BufferConfig
from buffer.sqlite import SqliteBuffer
from kernel.errors import BufferError_
from kernel.model import RecordDraft, RecordKind

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SEQ_CEILING = (1 << 63) - 1
CHUNK = 5_000

Row = tuple[int, str, str, str]


@dataclass
class SalvageReport:
    damaged: Path
    journal: Path
    read: int = 0  # rows read out of the damaged file
    appended: int = 0  # new records in the live journal
    already: int = 0  # salvaged by an earlier run
    refused: int = 0  # readings the live journal refused (disk critical); a rerun retries them
    unusable: list[int] = field(default_factory=list)  # rows read whose body is not a record
    skipped: list[tuple[int, int | None]] = field(default_factory=list)  # unreadable seq ranges
    first_new_seq: int | None = None
    last_new_seq: int | None = None
    error: str | None = None  # why nothing at all could be read

    @property
    def unreadable_seqs(self) -> int | None:
        """Seqs that could not be read (an upper bound of lost records); None if unbounded."""
        total = len(self.unusable)
        for lo, hi in self.skipped:
            if hi is None:
                return None
            total += hi - lo + 1
        return total

    def summary(self) -> str:
        lines = [
            f"salvage of {self.damaged} into {self.journal}:",
            f"  {self.read} record(s) read, {self.appended} appended"
            + (
                f" as seqs {self.first_new_seq}..{self.last_new_seq}"
                if self.first_new_seq is not None
                else ""
            )
            + f", {self.already} already salvaged by an earlier run",
        ]
        if self.refused:
            lines.append(
                f"  {self.refused} reading(s) refused by the live journal (disk space critical); "
                "run salvage again once there is room"
            )
        if self.error is not None:
            lines.append(f"  nothing readable through SQLite: {self.error}")
        if self.skipped or self.unusable:
            n = self.unreadable_seqs
            ranges = ", ".join(f"{lo}..{'?' if hi is None else hi}" for lo, hi in self.skipped)
            lines.append(
                f"  could not read {'an unknown number of' if n is None else f'at most {n}'} "
                f"seq(s)" + (f" in range(s) {ranges}" if ranges else "")
            )
            if self.unusable:
                shown = ", ".join(str(s) for s in self.unusable[:20])
                more = " ..." if len(self.unusable) > 20 else ""
                lines.append(f"  unusable rows (read, but not a record): {shown}{more}")
        else:
            lines.append("  every seq in the file was read")
        return "\n".join(lines)


class DamagedJournal:
    """Reads the records of a damaged journal in seq order, skipping what cannot be read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped: list[tuple[int, int | None]] = []
        self.error: str | None = None  # the first read error, for the report
        # Read-only: the damaged file is evidence and stays as it is. Used from one worker
        # thread at a time (asyncio.to_thread), never concurrently.
        self._db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        # Check each cell's size against its page as it is read: garbage is then an error we
        # skip, not a row we trust.
        self._db.execute("PRAGMA cell_size_check=ON")
        self._ceiling = self._upper_bound()
        self._epochs = self._read_epochs()
        self._pos = 0  # every seq <= _pos has been read or skipped
        self._done = False

    def close(self) -> None:
        self._db.close()

    def _upper_bound(self) -> int | None:
        """The highest seq the file may hold: where probing past a bad page can stop."""
        found = None
        for query in (
            "SELECT max(seq) FROM records",
            "SELECT value FROM meta WHERE key = 'last_seq'",
        ):
            try:
                row = self._db.execute(query).fetchone()
            except (sqlite3.Error, ValueError):
                continue
            if row is not None and row[0] is not None:
                found = max(found or 0, int(row[0]))
        return found

    def _read_epochs(self) -> list[tuple[int, str]] | None:
        """(first seq, epoch id) of the file's epochs, in order; [] for a file of a version
        before identities (all its rows are of the legacy epoch); None if unreadable."""
        try:
            rows = self._db.execute("SELECT first_seq, epoch FROM epochs ORDER BY first_seq")
            found = [(int(first), str(epoch)) for first, epoch in rows]
        except sqlite3.OperationalError as exc:
            return [] if "no such table" in str(exc) else None
        except (sqlite3.Error, ValueError, TypeError):
            return None
        return found or None

    def epoch_of(self, seq: int) -> str | None:
        """The epoch ``seq`` was made in: ``''`` (legacy), an id, or None if unknown."""
        if self._epochs is None:
            return None
        if not self._epochs:
            return ""
        found = None
        for first, epoch in self._epochs:
            if first <= seq:
                found = epoch
        return found

    def next_chunk(self, size: int = CHUNK) -> list[Row] | None:
        """The next readable rows (up to ``size``), ``None`` at the end."""
        while not self._done:
            rows: list[Row] = []
            try:
                cur = self._db.execute(
                    "SELECT seq, station, kind, body FROM records WHERE seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (self._pos, size),
                )
                for row in cur:
                    rows.append(row)
                    self._pos = row[0]
            except sqlite3.DatabaseError as exc:
                if self.error is None:
                    self.error = str(exc)
                self._skip()
                if rows:
                    return rows
                continue
            if not rows:
                self._done = True
                return None
            return rows
        return None

    def _fails(self, start: int) -> bool | None:
        """Does a walk from ``start`` break? ``None``: it works and finds nothing (the end)."""
        try:
            row = self._db.execute(
                "SELECT seq, station, kind, body FROM records WHERE seq >= ? ORDER BY seq LIMIT 1",
                (start,),
            ).fetchone()
        except sqlite3.DatabaseError:
            return True
        return None if row is None else False

    def _skip(self) -> None:
        """The row after ``_pos`` cannot be read: find the lowest seq a walk can start from
        again (exponential probe, then bisection) and record what lies between as skipped."""
        ceiling = SEQ_CEILING if self._ceiling is None else max(self._ceiling, self._pos + 1)
        bad = self._pos + 1  # a walk from here fails (that is how we got here)
        step = 1
        good: int | None = None
        while bad + step <= ceiling:
            if self._fails(bad + step) is not True:
                good = bad + step
                break
            bad += step
            step *= 2
        if good is None:
            if ceiling < SEQ_CEILING and self._fails(ceiling + 1) is not True:
                good = ceiling + 1
            else:
                self.skipped.append((self._pos + 1, self._ceiling))
                self._done = True
                return
        while good - bad > 1:
            mid = (bad + good) // 2
            if self._fails(mid) is True:
                bad = mid
            else:
                good = mid
        if self._fails(good) is None:  # readable again, but nothing after the bad stretch
            last = good - 1 if self._ceiling is None else min(good - 1, self._ceiling)
            self.skipped.append((self._pos + 1, max(last, self._pos + 1)))
            self._done = True
            return
        nxt = self._db.execute(
            "SELECT seq FROM records WHERE seq >= ? ORDER BY seq LIMIT 1", (good,)
        ).fetchone()[0]
        self.skipped.append((self._pos + 1, int(nxt) - 1))
        self._pos = int(nxt) - 1

    def rows(self, size: int = CHUNK) -> Iterator[list[Row]]:
        while (chunk := self.next_chunk(size)) is not None:
            yield chunk


def salvaged_draft(row: Row, journal: str, epoch: str | None = None) -> RecordDraft | None:
    """The new record for one old row, or None if the row is not a usable record. ``epoch``:
    the epoch the row was made in (None: unknown)."""
    seq, station, kind, body = row
    try:
        data: Any = json.loads(body)
        record_kind = RecordKind(kind)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(station, str):
        return None
    data.pop("seq", None)
    # A record salvaged once already names its original key: keep that, it is the key a
    # receiver may hold.
    origin: dict[str, Any] = {"seq": seq, "journal": journal}
    if epoch is not None:
        origin["epoch"] = epoch
    data.setdefault("salvaged", origin)
    return RecordDraft(station, record_kind, data)


async def salvage(damaged: Path, buffer: SqliteBuffer, *, chunk: int = CHUNK) -> SalvageReport:
    """Copy every readable record of ``damaged`` into the started ``buffer``."""
    report = SalvageReport(damaged, buffer.path)
    name = damaged.name
    done = await buffer.salvaged_seqs(name)
    try:
        reader = await asyncio.to_thread(DamagedJournal, damaged)
    except sqlite3.Error as exc:
        report.error = str(exc)
        return report
    try:
        while (rows := await asyncio.to_thread(reader.next_chunk, chunk)) is not None:
            drafts: list[RecordDraft] = []
            origins: list[tuple[str, int]] = []
            for row in rows:
                report.read += 1
                if row[0] in done:
                    report.already += 1
                    continue
                draft = salvaged_draft(row, name, reader.epoch_of(row[0]))
                if draft is None:
                    report.unusable.append(row[0])
                    continue
                drafts.append(draft)
                origins.append((name, row[0]))
            if not drafts:
                continue
            before = buffer.last_assigned_seq
            last = buffer.append_salvaged(drafts, origins)
            await buffer.flush()
            added = last - before
            report.appended += added
            report.refused += len(drafts) - added
            if added:
                if report.first_new_seq is None:
                    report.first_new_seq = before + 1
                report.last_new_seq = last
    except sqlite3.Error as exc:
        report.error = str(exc)
    finally:
        reader.close()
    report.skipped = reader.skipped
    if report.read == 0 and report.error is None:
        report.error = reader.error
    await buffer.mark_salvaged(damaged)
    return report


def main(cfg: BufferConfig, config_path: str, damaged_arg: str) -> int:
    """The CLI command, once the agent's config is loaded: take the live journal (the agent
    stopped), salvage ``damaged_arg`` into it, print the report. ``config_path`` places a
    relative journal path as the agent does."""
    damaged = Path(damaged_arg)
    journal = Path(cfg.path)
    if not damaged.is_file():
        print(f"{damaged}: no such file", file=sys.stderr)
        return EXIT_USAGE
    if damaged.resolve() == journal.resolve() or damaged.name.endswith(("-wal", "-shm")):
        print(
            f"{damaged}: give the damaged journal set aside at start "
            f"({journal.name}.damaged-<time>), not the live journal or a -wal/-shm file",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def run() -> SalvageReport:
        buffer = SqliteBuffer.from_config(cfg, config_path=config_path)
        await buffer.start()
        try:
            return await salvage(damaged, buffer)
        finally:
            await buffer.stop()

    try:
        report = asyncio.run(run())
    except BufferError_ as exc:
        print(f"salvage failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    return EXIT_FAILED if report.error is not None and report.read == 0 else EXIT_OK
