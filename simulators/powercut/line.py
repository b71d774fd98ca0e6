"""The whole line under power cuts: the rig of ``simulators/rig.py`` (handshake PLCs in this
process, Mosquitto, the trace store and the agent as child processes) with the agent's
journal on one power-cut filesystem (the line PC's disk) and the trace store's SQLite on
another (the central server's disk).

A cut hits the line PC, the central server or both, at a random instant or at a random coming
fsync of one of the disks (just before or just after it takes effect). The filesystem drops
what was not synced (and may tear or reorder the last writes, disk.py); the processes of the
machines that lost power are stopped at that instant (SIGSTOP, or their disk answers EIO from
then on) and SIGKILLed, the disk powered on, and they are started again. The checks of
:meth:`PowerCutLine.check` then run against what the restarted chain shows:

- the agent comes back (its control socket answers); a journal it found damaged was moved
  aside with the ``buffer_damaged`` alarm (counted, then salvaged as an operator would);
- seqs never go backwards: the journal's last seq is at least every seq the broker already
  accepted, and no seq is ever published again with other content (:class:`Witness`);
- everything the store confirmed is still there: no confirmed watermark went back, and the
  records at or below each epoch's last confirmed watermark are exactly those it held before
  the cut;
- every record the broker accepted and every part the PLC released ("data taken") is in the
  trace store or still in the journal (on its way), nowhere lost.

The final check (:meth:`PowerCutLine.finish`) drains the journal and asks that the store holds
every record exactly once (``simulators.rig.check_consistent``), every released part too.
Violations are collected as sentences, not raised, so a soak reports all it found.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent.control import ControlError, request
from simulators.powercut.control import PowerCutMount
from simulators.powercut.disk import CUT_MODES, CutMode
from simulators.powercut.witness import Witness
from simulators.rig import AGENT, LineRig, StoreView, check_consistent, wait_until

Target = Literal["line_pc", "central", "both"]
TARGETS: tuple[Target, ...] = ("both", "both", "line_pc", "central")  # weights by repetition
MOMENTS = ("moment", "before_fsync", "after_fsync")
FIRE_WITHIN = 10.0  # s for an armed cut to strike (the line syncs many times a second)
CHUNK = 500  # seqs per IN (...) query


@dataclass
class Tally:
    cuts: int = 0
    by_target: dict[str, int] = field(default_factory=dict)
    by_mode: dict[str, int] = field(default_factory=dict)
    by_moment: dict[str, int] = field(default_factory=dict)
    torn: int = 0
    lost_pages: int = 0  # unsynced pages thrown away, over all cuts
    damaged_journals: int = 0
    salvaged: int = 0
    broker_kills: int = 0
    violations: list[str] = field(default_factory=list)
    cut_seconds: list[float] = field(default_factory=list)


class PowerCutLine:
    """See the module docstring. ``start`` raises ``MountError`` if FUSE is not available."""

    def __init__(
        self,
        workdir: Path,
        *,
        stations: int = 2,
        poll_interval: float = 0.01,
        broker_kill_every: int = 0,
    ) -> None:
        self.workdir = workdir
        self.line_pc = PowerCutMount(workdir / "line-pc-disk", workdir / "line-pc")
        self.central = PowerCutMount(workdir / "central-disk", workdir / "central")
        self.rig = LineRig(workdir / "rig", stations=stations, poll_interval=poll_interval)
        # Only the two databases move onto the mounts; config, logs and the broker stay put.
        self.rig.journal = self.line_pc.mountpoint / "agent" / "buffer.db"
        self.rig.store_db = self.central.mountpoint / "store" / "trace.db"
        self.socket = self.rig.journal.with_suffix(".sock")
        self.broker_kill_every = broker_kill_every
        self.witness: Witness | None = None
        self.tally = Tally()
        self._verified_parts: dict[str, int] = {}  # station -> counters 1..n found stored
        self._damaged_seen: set[Path] = set()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.line_pc.start)
        await asyncio.to_thread(self.central.start)
        for mount, folder in ((self.line_pc, "agent"), (self.central, "store")):
            (mount.mountpoint / folder).mkdir()
            # The data folders were made at install time, long before any cut.
            await asyncio.to_thread(mount.sync)
        await self.rig.start_plc()
        await self.rig.start_broker()
        self.witness = Witness(self.rig.broker.port, AGENT)
        await asyncio.to_thread(self.witness.start)
        self.rig.start_store()
        self.rig.start_agent()
        await self._agent_up()

    async def close(self) -> None:
        try:
            await self.rig.close()
        finally:
            if self.witness is not None:
                await asyncio.to_thread(self.witness.stop)
            await asyncio.to_thread(self.line_pc.stop)
            await asyncio.to_thread(self.central.stop)

    async def run_for(self, rng: random.Random, max_records: int) -> None:
        """Let the line run until the broker has passed up to ``max_records`` (random) more
        records, then a random fraction of a second more: the cut's moment is not tied to a
        commit. Counted by the witness, not in the store: a reader polling the store's
        database would keep its WAL from being reset, and it would grow without bound."""
        assert self.witness is not None
        witness = self.witness
        target = len(witness.seen.digests) + rng.randint(0, max_records)
        await wait_until(lambda: len(witness.seen.digests) >= target, 120, "records under load")
        await asyncio.sleep(rng.uniform(0, 0.2))  # the moment of the cut, not a wait

    # ---- the cut ----------------------------------------------------------------------------

    async def cut(self, rng: random.Random, target: Target | None = None) -> dict[str, Any]:
        """One power cut, the restart, and the checks after it.

        The moment is one of: now (``moment``); at a random coming fsync of one disk, just
        before it takes effect (``before_fsync``: a transaction written, not synced, where a
        torn write can hurt) or just after (``after_fsync``: durable, never acknowledged).
        """
        started = time.monotonic()
        where: Target = target if target is not None else rng.choice(TARGETS)
        mode: CutMode = rng.choice(CUT_MODES)
        moment = rng.choice(MOMENTS)
        wire_max, confirmed = self.witness_marks()
        held = await asyncio.to_thread(self._fingerprint, confirmed)
        hit = [
            (mount, proc_name)
            for mount, proc_name, on in (
                (self.line_pc, "agent", where in ("line_pc", "both")),
                (self.central, "store", where in ("central", "both")),
            )
            if on
        ]
        reports: list[dict[str, Any]] = []
        armed = None
        if moment != "moment":
            armed = rng.choice(hit)[0]
            await asyncio.to_thread(
                armed.arm,
                rng.randint(0, 10),
                before=moment == "before_fsync",
                mode=mode,
                seed=rng.randrange(1 << 30),
            )
            fired = await self._wait_fired(armed)
            if fired is None:
                moment = "moment"  # nothing synced within the wait: cut now instead
            else:
                reports.append(fired)
        for _mount, name in hit:
            proc = getattr(self.rig, name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGSTOP)  # the instant the power goes
        for mount, _name in hit:
            if mount is not armed or moment == "moment":
                reports.append(await asyncio.to_thread(mount.cut, mode, rng.randrange(1 << 30)))
        for mount, name in hit:
            await self._power_off(name)
            await asyncio.to_thread(mount.power_on)
        self._count(where, mode, moment, reports)
        if self.broker_kill_every and self.tally.cuts % self.broker_kill_every == 0:
            self.rig.kill_broker()  # the whole plant lost power: the broker's memory too
            self.tally.broker_kills += 1
            await self.rig.start_broker()
        for _mount, name in hit:
            (self.rig.start_store if name == "store" else self.rig.start_agent)()
        when = f"cut {self.tally.cuts} ({where}, {mode}, {moment})"
        await self.check(when, wire_max, confirmed, held)
        self.tally.cut_seconds.append(time.monotonic() - started)
        return {"target": where, "mode": mode, "moment": moment, "reports": reports}

    async def _wait_fired(self, mount: PowerCutMount) -> dict[str, Any] | None:
        deadline = time.monotonic() + FIRE_WITHIN
        while time.monotonic() < deadline:
            fired = await asyncio.to_thread(mount.fired)
            if fired is not None:
                return fired
            await asyncio.sleep(0.005)
        return None

    async def _power_off(self, name: str) -> None:
        """SIGKILL a process of a machine that lost power (it may have exited already, on the
        EIO its disk answered after an armed cut)."""
        proc = getattr(self.rig, name)
        setattr(self.rig, name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait)

    def _count(self, target: str, mode: str, moment: str, reports: list[dict[str, Any]]) -> None:
        t = self.tally
        t.cuts += 1
        for key, table in ((target, t.by_target), (mode, t.by_mode), (moment, t.by_moment)):
            table[key] = table.get(key, 0) + 1
        t.torn += sum(1 for r in reports if "torn" in r)
        t.lost_pages += sum(int(r["dirty_pages"]) - int(r["persisted_pages"]) for r in reports)

    def witness_marks(self) -> tuple[int, dict[str, int]]:
        assert self.witness is not None
        return self.witness.marks()

    # ---- the checks -------------------------------------------------------------------------

    def violation(self, text: str) -> None:
        self.tally.violations.append(text)

    async def check(
        self, when: str, wire_max: int, confirmed: dict[str, int], held: dict[str, Any]
    ) -> None:
        if not await self._agent_up(when):
            return
        assert self.witness is not None
        with self.witness.lock:
            reused, self.witness.seen.reused = self.witness.seen.reused, []
        for text in reused[:5]:
            self.violation(f"{when}: {text}")
        if len(reused) > 5:
            self.violation(f"{when}: ... and {len(reused) - 5} more seqs published twice")
        last, _left = await asyncio.to_thread(self.rig.journal_state)
        if last < wire_max:
            self.violation(
                f"{when}: seqs went backwards: the journal's last seq is {last}, but the broker "
                f"had already accepted seq {wire_max}"
            )
        with self.witness.lock:
            regressed, self.witness.seen.regressed = self.witness.seen.regressed, []
        for text in regressed:
            self.violation(f"{when}: {text}")
        now = await asyncio.to_thread(self._fingerprint, confirmed)
        for epoch, before in held.items():
            if now.get(epoch) != before:
                self.violation(
                    f"{when}: records at or below the confirmed watermark {confirmed[epoch]} of "
                    f"epoch {epoch or '(legacy)'} changed: (count, sum, min, max) {before} "
                    f"before the cut, {now.get(epoch)} after"
                )
        await asyncio.to_thread(self._check_acknowledged, when)

    async def _agent_up(self, when: str = "start") -> bool:
        """Wait until the agent answers on its control socket; note a moved-aside journal."""
        deadline = time.monotonic() + 90
        status: dict[str, Any] | None = None
        while status is None:
            proc = self.rig.agent
            if proc is None or proc.poll() is not None:
                self.violation(f"{when}: the agent did not start: {self.rig.log_tail('agent', 8)}")
                return False
            try:
                status = (await request(self.socket, {"op": "status"}, answer_within=5))["status"]
            except (ControlError, OSError, TimeoutError, KeyError, ValueError):
                if time.monotonic() > deadline:
                    self.violation(f"{when}: the agent's control socket did not answer in 90 s")
                    return False
                await asyncio.sleep(0.05)
        alarms = {a["code"] for a in status.get("alarms", [])}
        folder = self.rig.journal.parent
        damaged = {
            p
            for p in folder.glob(self.rig.journal.name + ".damaged-*")
            if not p.name.endswith(("-wal", "-shm"))
        }
        fresh = damaged - self._damaged_seen
        if fresh and "buffer_damaged" not in alarms:
            self.violation(f"{when}: journal moved aside without the buffer_damaged alarm")
        for path in sorted(fresh):
            self.tally.damaged_journals += 1
            self._damaged_seen.add(path)
            await self._salvage(path, when)
        return True

    async def _salvage(self, damaged: Path, when: str) -> None:
        """What the alarm tells the operator to do: stop the agent, salvage, start again."""
        await self.rig.stop_agent()
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "edge_agent.cli",
                "buffer",
                "salvage",
                "-c",
                str(self.rig.config_path),
                str(damaged),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            self.violation(f"{when}: salvage of {damaged.name} failed: {done.stderr.strip()}")
        else:
            self.tally.salvaged += 1
        self.rig.start_agent()
        await self._agent_up(when)

    def _check_acknowledged(self, when: str) -> None:
        """Every record the broker accepted and every part the PLC released is in the store or
        still in the journal. The journal is read first: a row leaves it only once the store
        has confirmed it, so nothing can slip between the two reads."""
        assert self.witness is not None
        wire = self.witness.take_new()
        released = {
            name: self.rig.plc.plc(i + 1).parts_released
            for i, name in enumerate(self.rig.station_names())
        }
        journal_seqs = self._seqs_in(self.rig.journal, wire)
        journal_parts = self._journal_parts()
        stored = self._seqs_in(self.rig.store_db, set(wire) - journal_seqs)
        lost = sorted(set(wire) - journal_seqs - stored)
        if lost:
            self.violation(
                f"{when}: {len(lost)} record(s) the broker had accepted are neither in the store "
                f"nor in the journal, e.g. seqs {lost[:5]}"
            )
        with self.witness.lock:
            part_seqs = dict(self.witness.seen.parts)
        for station, count in released.items():
            done = self._verified_parts.get(station, 0)
            todo = {
                c: part_seqs.get((station, c))
                for c in range(done + 1, count + 1)
                if (station, c) not in journal_parts
            }
            # One query for all of them: each connection holds the store's WAL back a little.
            stored_parts = self._seqs_in(self.rig.store_db, [s for s in todo.values() if s])
            missing = [
                c
                for c, seq in todo.items()
                if (seq is None and not self._stored_part(station, c))
                or (seq is not None and seq not in stored_parts)
            ]
            if missing:
                self.violation(
                    f"{when}: part(s) {missing[:5]} of {station} were released by the PLC "
                    "(data taken) but are neither in the journal nor in the store"
                )
            # Parts below the first one still in the journal are in the store for good.
            pending = [c for (s, c) in journal_parts if s == station]
            self._verified_parts[station] = min([count, *[c - 1 for c in pending]])

    # ---- queries (read-only, each on its own connection: the files are live) -----------------

    def _fingerprint(self, marks: dict[str, int]) -> dict[str, Any]:
        """Per confirmed epoch, (count, sum, min, max) of the store's seqs of that epoch at or
        below its watermark: fixed once confirmed, since no such record can arrive later or
        go away. A store without epochs (the legacy watermark ``""``) counts every record."""
        marks = {e: m for e, m in marks.items() if m > 0}
        if not marks:
            return {}
        columns = {r[1] for r in _query(self.rig.store_db, "PRAGMA table_info(records)", ())}
        if "epoch" not in columns:
            marks = {"": max(marks.values())}
            rows = _query(
                self.rig.store_db,
                "SELECT '', count(*), total(seq), min(seq), max(seq) FROM records "
                "WHERE agent = ? AND seq <= ?",
                (AGENT, marks[""]),
            )
        else:
            values = ",".join("(?, ?)" for _ in marks)
            rows = _query(
                self.rig.store_db,
                f"WITH w(epoch, mark) AS (VALUES {values}) "
                "SELECT w.epoch, count(r.seq), total(r.seq), min(r.seq), max(r.seq) FROM w "
                "LEFT JOIN records r ON r.agent = ? AND r.epoch = w.epoch AND r.seq <= w.mark "
                "GROUP BY w.epoch",
                (*[x for pair in marks.items() for x in pair], AGENT),
            )
        return {str(r[0]): tuple(r[1:]) for r in rows}

    def _seqs_in(self, db: Path, seqs: Iterable[int]) -> set[int]:
        wanted = sorted(seqs)
        found: set[int] = set()
        agent_filter = " AND agent = ?" if db == self.rig.store_db else ""
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i : i + CHUNK]
            marks = ",".join("?" * len(chunk))
            params: tuple[Any, ...] = (*chunk, AGENT) if agent_filter else tuple(chunk)
            rows = _query(
                db, f"SELECT seq FROM records WHERE seq IN ({marks}){agent_filter}", params
            )
            found.update(int(r[0]) for r in rows)
        return found

    def _journal_parts(self) -> set[tuple[str, int]]:
        rows = _query(self.rig.journal, "SELECT body FROM records WHERE kind = 'part'", ())
        parts = set()
        for (body,) in rows:
            doc = json.loads(body)
            parts.add((str(doc.get("station")), int(doc["counter"])))
        return parts

    def _stored_part(self, station: str, counter: int) -> bool:
        """A part the witness did not see (it was reconnecting): look for it the slow way."""
        rows = _query(
            self.rig.store_db,
            "SELECT 1 FROM records WHERE agent = ? AND station = ? AND kind = 'part' AND "
            "json_extract(body, '$.counter') = ? LIMIT 1",
            (AGENT, station, counter),
        )
        return bool(rows)

    # ---- the end ------------------------------------------------------------------------------

    async def finish(self) -> StoreView:
        """Drain everything with the power on, then the exactly-once check of the store.
        Returns what the store holds."""
        await self.rig.settle(within=300)
        released = {
            name: self.rig.plc.plc(i + 1).parts_released
            for i, name in enumerate(self.rig.station_names())
        }
        try:
            view = await asyncio.to_thread(check_consistent, self.rig)
        except AssertionError as exc:
            self.violation(f"final check: {exc}")
            view = await asyncio.to_thread(self.rig.store_view)  # the other checks still run
        for station, count in released.items():
            stored = set(view.parts.get(station, []))
            missing = sorted(set(range(1, count + 1)) - stored)
            if missing:
                self.violation(
                    f"final check: parts {missing[:5]} of {station} were released by the PLC "
                    "but are not in the store"
                )
        assert self.witness is not None
        with self.witness.lock:
            wire = set(self.witness.seen.digests)
        lost = sorted(wire - view.seqs)
        if lost:
            self.violation(f"final check: seqs the broker accepted are not stored: {lost[:5]}")
        return view


def _query(db: Path, sql: str, params: tuple[Any, ...], within: float = 30.0) -> list[Any]:
    """Rows of one read-only query; retried while the database is busy or being recovered by
    a process that just started (a power cut leaves it to the next opener)."""
    deadline = time.monotonic() + within
    while True:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or time.monotonic() > deadline:
                if "no such table" in str(exc):
                    return []
                raise
            time.sleep(0.05)
