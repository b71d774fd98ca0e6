"""One MQTT message checked against docs/wire-format.md, and what of it the store keeps.

``parse`` is a pure function: topic and payload bytes in, an ``Accepted`` message (the rows and
genealogy edges to store, the range it belongs to) or a ``Rejection`` (a reason code and a
human-readable detail) out. It never raises on bad input, so one broken publisher can never
stop the store.

Everything ``parse`` accepts must be storable by both backends: a message that passed here but
made the database refuse the transaction would be redelivered forever. Hence the bounds on
integers (PostgreSQL ``BIGINT``), and the index columns (serial, lot, ...) cleaned of NUL and
lone surrogates, which neither PostgreSQL text nor UTF-8 can hold. The record body keeps the
original values: it is stored as JSON text, where both are escaped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard

from trace_store.parts import PartFields, part_fields

SCHEMA = "edge-agent.records"
VERSION = 2
VERSIONS = frozenset({1, VERSION})
"""v2 added ``kind: readings`` (a device response per record). v1 differs only in having
none, so one parser takes both; agents not yet upgraded keep sending v1."""
MAX_SEQ = 2**63 - 1  # PostgreSQL BIGINT; a larger seq could not be stored
MAX_LEVEL_CHARS = 128  # agent/site/line/station: generous, but bounded (they key tables)
LEGACY_EPOCH = ""
"""The epoch of messages without one: agents of the previous version, and the rows a journal
of that version held when it was upgraded. Their key is (agent, seq) as it always was."""
IDENTITY = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
"""A journal or epoch id: the agent sends 32 hex digits; other publishers may use a UUID."""

Stream = tuple[str, str]
"""(agent, epoch): the unit that has its own seqs, ranges and watermark."""


class Reason(StrEnum):
    """Why a message was rejected. The value is what logs, counters and the table show."""

    # malformed: the publisher is broken
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    BAD_ENVELOPE = "bad_envelope"  # a missing or ill-typed envelope field
    BAD_RECORD = "bad_record"  # a record that is not an object with seq/kind/station/ts
    COUNT_MISMATCH = "count_mismatch"  # `count` is not the number of records
    SEQ_ORDER = "seq_order"  # records not in strictly increasing seq order
    SEQ_BOUNDS = "seq_bounds"  # first/last record seq differ from first_seq/last_seq
    STATION_MISMATCH = "station_mismatch"  # a record of another station than the envelope's
    BAD_RANGE = "bad_range"  # `range` ill-typed, or the message does not fit in it
    # oversized: larger than --max-message-bytes
    OVERSIZED = "oversized"
    # foreign: not for us, or from a publisher we do not know how to read
    TOPIC_MISMATCH = "topic_mismatch"  # topic levels differ from the envelope
    UNKNOWN_SCHEMA = "unknown_schema"
    UNKNOWN_VERSION = "unknown_version"
    AGENT_NOT_ALLOWED = "agent_not_allowed"
    # the database refused this message on its own (a bug, or a value it cannot hold)
    STORE_ERROR = "store_error"


FOREIGN = frozenset(
    {
        Reason.TOPIC_MISMATCH,
        Reason.UNKNOWN_SCHEMA,
        Reason.UNKNOWN_VERSION,
        Reason.AGENT_NOT_ALLOWED,
    }
)


def reason_class(reason: Reason) -> str:
    """``malformed``, ``oversized``, ``foreign`` or ``store_error``: the three input classes
    of docs/trace-store.md, plus the database's own refusals."""
    if reason is Reason.OVERSIZED:
        return "oversized"
    if reason is Reason.STORE_ERROR:
        return "store_error"
    return "foreign" if reason in FOREIGN else "malformed"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str
    agent: str | None = None  # when the envelope got far enough to name one


@dataclass(frozen=True, slots=True)
class Range:
    """The journal read a message came from: exactly ``count`` records in ``(after, last]``."""

    after: int
    last: int
    count: int


@dataclass(frozen=True, slots=True)
class Row:
    """One record as stored, keyed by (agent, epoch, seq): ``salvaged``'s epoch and seq for a
    salvaged record (see ``_storage_key``), the message's epoch and the record's seq otherwise."""

    agent: str
    seq: int
    site: str
    line: str
    station: str
    kind: str
    ts: str
    serial: str | None
    body: str
    epoch: str = LEGACY_EPOCH
    # A part record's fields for the ``parts`` table, read here where the body is decoded
    # (``trace_store/parts.py``); None: the store reads them from ``body``.
    part: PartFields | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Edge:
    """A genealogy edge: ``parent`` (a serial) contains ``child`` (a lot or a component
    serial). ``how`` is ``consumption`` (a consumption record) or ``part`` (a part record made
    while the station's context ``lot`` was ``child``)."""

    agent: str
    seq: int
    parent: str
    child_kind: str  # "lot" or "component"
    child: str
    how: str
    site: str
    line: str
    station: str
    ts: str
    product: str | None = None
    quantity: float | None = None
    unit: str | None = None
    epoch: str = LEGACY_EPOCH


@dataclass(frozen=True, slots=True)
class Accepted:
    agent: str
    site: str
    line: str
    station: str
    first_seq: int
    last_seq: int
    count: int
    range: Range | None
    rows: tuple[Row, ...]
    edges: tuple[Edge, ...]
    # The agent's mqtt.confirm and mqtt.order as sent; agents older than these fields send
    # neither and are puback / in_order. Any other value is kept as is (and never held).
    confirm: str = "puback"
    order: str = "in_order"
    # The journal identity (docs/wire-format.md, "Journal identity"); absent from agents of
    # the previous version: the legacy epoch, whose seqs start at 1.
    epoch: str = LEGACY_EPOCH
    epoch_first: int = 1
    journal: str | None = None

    @property
    def stream(self) -> Stream:
        """Whose seqs, ranges and watermark this message's records belong to."""
        return (self.agent, self.epoch)

    @property
    def floor(self) -> int:
        """Every seq up to this is not of the epoch: where its watermark starts."""
        return self.epoch_first - 1

    @property
    def message_id(self) -> tuple[str, int]:
        """What tells two messages of one range apart (wire format, "Ranges")."""
        return (self.station, self.first_seq)

    @property
    def holdable(self) -> bool:
        """May the store set this message aside until the seqs below its range are in?

        Only for an agent that keeps the records until the store confirms them (``store``:
        it resends from the watermark, so a message set aside and lost is never a loss) and
        that sends in seq order (``in_order``: a ``live_first`` agent sends its newest records
        first on purpose, and holding them back for the backlog would defeat that).
        """
        return self.confirm == "store" and self.order == "in_order" and self.range is not None


class _Invalid(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def invalid_level(value: str) -> str | None:
    """Why ``value`` cannot be one topic level (agent, site, line, station), or None."""
    if not value:
        return "empty"
    if len(value) > MAX_LEVEL_CHARS:
        return f"longer than {MAX_LEVEL_CHARS} characters"
    if any(c in value for c in "/+#\0"):
        return f"{value!r} contains '/', an MQTT wildcard or NUL"
    if not _encodable(value):
        return f"{value!r} is not valid Unicode"
    return None


def split_topic(topic: str, prefix: str) -> tuple[str, str, str] | None:
    """``(site, line, station)`` of ``<prefix>/<site>/<line>/<station>/records``, else None."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head) :].split("/")
    if len(levels) != 4 or levels[3] != "records":
        return None
    return levels[0], levels[1], levels[2]


def parse(
    topic: str,
    payload: bytes,
    *,
    prefix: str,
    max_bytes: int,
    allowed_agents: frozenset[str] | None = None,
) -> Accepted | Rejection:
    """Check one message; never raises on bad input."""
    if len(payload) > max_bytes:
        return Rejection(Reason.OVERSIZED, f"{len(payload)} bytes > limit of {max_bytes}")
    levels = split_topic(topic, prefix)
    if levels is None:
        return Rejection(Reason.TOPIC_MISMATCH, f"topic {topic!r} is not {prefix}/+/+/+/records")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(Reason.NOT_UTF8, f"not UTF-8: {exc}")
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        return Rejection(Reason.NOT_JSON, f"not JSON: {str(exc)[:200]}")
    if not isinstance(doc, dict):
        return Rejection(Reason.NOT_JSON, f"not a JSON object but {type(doc).__name__}")
    agent = doc.get("agent")
    named = agent if isinstance(agent, str) and invalid_level(agent) is None else None
    try:
        return _check(doc, levels, allowed_agents)
    except _Invalid as exc:
        return Rejection(exc.reason, exc.detail, named)


def _check(
    doc: dict[str, Any],
    levels: tuple[str, str, str],
    allowed_agents: frozenset[str] | None,
) -> Accepted:
    # Schema and version first: a future envelope may differ in every other field.
    schema = doc.get("schema")
    if schema != SCHEMA:
        raise _Invalid(Reason.UNKNOWN_SCHEMA, f"schema {_short(schema)}, expected {SCHEMA!r}")
    version = doc.get("v")
    if not _is_int(version) or version not in VERSIONS:
        raise _Invalid(
            Reason.UNKNOWN_VERSION, f"envelope v {_short(version)}, expected 1 or {VERSION}"
        )
    agent = _level(doc, "agent")
    site = _level(doc, "site")
    line = _level(doc, "line")
    station = _level(doc, "station")
    if (site, line, station) != levels:
        raise _Invalid(
            Reason.TOPIC_MISMATCH,
            f"envelope says {site}/{line}/{station}, topic says {'/'.join(levels)}",
        )
    if allowed_agents is not None and agent not in allowed_agents:
        raise _Invalid(Reason.AGENT_NOT_ALLOWED, f"agent {agent!r} is not in the allowlist")
    first_seq = _seq(doc, "first_seq")
    last_seq = _seq(doc, "last_seq")
    count = doc.get("count")
    if not _is_int(count):
        raise _Invalid(Reason.BAD_ENVELOPE, f"count: expected an integer, got {_short(count)}")
    records = doc.get("records")
    if not isinstance(records, list):
        raise _Invalid(Reason.BAD_ENVELOPE, f"records: expected an array, got {_short(records)}")
    if count < 1 or count != len(records):
        raise _Invalid(
            Reason.COUNT_MISMATCH, f"count {count} but {len(records)} records in the message"
        )
    rng = _range(doc.get("range"), first_seq, last_seq, count)
    journal, epoch, epoch_first = _identity(doc)
    if first_seq < epoch_first:
        raise _Invalid(
            Reason.SEQ_BOUNDS, f"first_seq {first_seq} below its epoch's first seq {epoch_first}"
        )

    rows: list[Row] = []
    edges: list[Edge] = []
    previous = 0
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise _Invalid(Reason.BAD_RECORD, f"records[{index}] is not an object")
        seq = record.get("seq")
        if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
            raise _Invalid(Reason.BAD_RECORD, f"records[{index}].seq: {_short(seq)}")
        if seq <= previous:
            raise _Invalid(Reason.SEQ_ORDER, f"records[{index}].seq {seq} after seq {previous}")
        previous = seq
        if record.get("station") != station:
            raise _Invalid(
                Reason.STATION_MISMATCH,
                f"record seq {seq} has station {_short(record.get('station'))}, "
                f"the message {station!r}",
            )
        kind = record.get("kind")
        ts = record.get("ts")
        if not isinstance(kind, str) or not kind:
            raise _Invalid(Reason.BAD_RECORD, f"record seq {seq}: kind {_short(kind)}")
        if not isinstance(ts, str):
            raise _Invalid(Reason.BAD_RECORD, f"record seq {seq}: ts {_short(ts)}")
        ctx = record.get("ctx")
        if ctx is not None and not isinstance(ctx, dict):
            raise _Invalid(Reason.BAD_RECORD, f"record seq {seq}: ctx {_short(ctx)}")
        key_epoch, key = _storage_key(record, seq, epoch)
        serial = _serial_of(record, ctx)
        rows.append(
            Row(
                agent,
                key,
                site,
                line,
                station,
                _clean(kind),
                _clean(ts),
                serial,
                _dump(record),
                key_epoch,
                part_fields(record) if kind == "part" else None,
            )
        )
        edges.extend(_edges(record, kind, ctx, agent, (key_epoch, key), site, line, station, ts))
    if records[0]["seq"] != first_seq or records[-1]["seq"] != last_seq:
        raise _Invalid(
            Reason.SEQ_BOUNDS,
            f"records span seq {records[0]['seq']}..{records[-1]['seq']}, "
            f"envelope says {first_seq}..{last_seq}",
        )
    return Accepted(
        agent,
        site,
        line,
        station,
        first_seq,
        last_seq,
        count,
        rng,
        tuple(rows),
        tuple(edges),
        confirm=_mode(doc, "confirm", "puback"),
        order=_mode(doc, "order", "in_order"),
        epoch=epoch,
        epoch_first=epoch_first,
        journal=journal,
    )


def _identity(doc: dict[str, Any]) -> tuple[str | None, str, int]:
    """(journal, epoch, epoch_first) of a message; the legacy epoch when it names none."""
    journal = doc.get("journal")
    if journal is not None and not (isinstance(journal, str) and IDENTITY.match(journal)):
        raise _Invalid(Reason.BAD_ENVELOPE, f"journal: expected an id, got {_short(journal)}")
    epoch = doc.get("epoch", LEGACY_EPOCH)
    if epoch == LEGACY_EPOCH:
        return journal, LEGACY_EPOCH, 1
    if not isinstance(epoch, str) or not IDENTITY.match(epoch):
        raise _Invalid(Reason.BAD_ENVELOPE, f"epoch: expected an id, got {_short(epoch)}")
    first = doc.get("epoch_first")
    if not _is_int(first) or not 1 <= first <= MAX_SEQ:
        raise _Invalid(
            Reason.BAD_ENVELOPE, f"epoch_first: expected a seq with the epoch, got {_short(first)}"
        )
    return journal, epoch, first


def _mode(doc: dict[str, Any], name: str, default: str) -> str:
    """``confirm`` / ``order``: advisory, so an odd value never rejects the records; it only
    keeps the message from being held (``?`` matches no mode)."""
    value = doc.get(name, default)
    return value if isinstance(value, str) else "?"


def _range(value: Any, first_seq: int, last_seq: int, count: int) -> Range | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(Reason.BAD_RANGE, f"range: expected an object, got {_short(value)}")
    after, last, total = value.get("after"), value.get("last"), value.get("count")
    if not (_is_int(after) and _is_int(last) and _is_int(total)):
        raise _Invalid(Reason.BAD_RANGE, f"range: after/last/count must be integers: {value!r}")
    # A range must be able to hold what it claims, and this message must lie inside it;
    # otherwise counting its records towards the range could confirm seqs never received.
    if not (0 <= after < last <= MAX_SEQ and 1 <= total <= last - after):
        raise _Invalid(Reason.BAD_RANGE, f"range {after}..{last} cannot hold {total} records")
    if not (after < first_seq and last_seq <= last and count <= total):
        raise _Invalid(
            Reason.BAD_RANGE,
            f"message seq {first_seq}..{last_seq} ({count} records) is not inside range "
            f"({after}, {last}] of {total} records",
        )
    return Range(after, last, total)


def _storage_key(record: dict[str, Any], seq: int, epoch: str) -> tuple[str, int]:
    """(epoch, seq) the record is stored under. A salvaged record is the record it was in the
    damaged journal (wire format, "Salvaged records"): ``salvaged.epoch`` and ``salvaged.seq``.
    Without ``salvaged.epoch`` a message of the legacy epoch means the legacy epoch (what an
    agent of the previous version salvaged); a message with an epoch means the salvage could
    not tell, and the record keeps its own key: at worst stored twice, never dropped."""
    salvaged = record.get("salvaged")
    if salvaged is None:
        return epoch, seq
    original = salvaged.get("seq") if isinstance(salvaged, dict) else None
    if not _is_int(original) or not 1 <= original <= MAX_SEQ:
        raise _Invalid(Reason.BAD_RECORD, f"record seq {seq}: salvaged {_short(salvaged)}")
    assert isinstance(salvaged, dict)
    if "epoch" not in salvaged:
        return (LEGACY_EPOCH, original) if epoch == LEGACY_EPOCH else (epoch, seq)
    was = salvaged["epoch"]
    if was != LEGACY_EPOCH and not (isinstance(was, str) and IDENTITY.match(was)):
        raise _Invalid(Reason.BAD_RECORD, f"record seq {seq}: salvaged {_short(salvaged)}")
    return was, original


def _serial_of(record: dict[str, Any], ctx: dict[str, Any] | None) -> str | None:
    """The serial a record belongs to: its own ``serial`` (part, consumption: the part's
    serial, corrected by the PLC register) or else the station context's."""
    own = record.get("serial")
    if isinstance(own, str) and own:
        return _clean(own)
    current = ctx.get("serial") if ctx is not None else None
    return _clean(current) if isinstance(current, str) and current else None


def _edges(
    record: dict[str, Any],
    kind: str,
    ctx: dict[str, Any] | None,
    agent: str,
    key: tuple[str, int],
    site: str,
    line: str,
    station: str,
    ts: str,
) -> list[Edge]:
    serial = record.get("serial")
    if not isinstance(serial, str) or not serial:
        return []  # a consumption or part without a serial links nothing
    parent = _clean(serial)
    when = _clean(ts)
    epoch, seq = key

    def edge(child_kind: str, child: str, how: str, **extra: Any) -> Edge:
        return Edge(
            agent,
            seq,
            parent,
            child_kind,
            child,
            how,
            site,
            line,
            station,
            when,
            **extra,
            epoch=epoch,
        )

    out: list[Edge] = []
    if kind == "consumption":
        quantity = record.get("quantity")
        extra = {
            "product": _text(record.get("product")),
            "quantity": float(quantity) if _is_number(quantity) else None,
            "unit": _text(record.get("unit")),
        }
        for child_kind in ("lot", "component"):
            child = _text(record.get(child_kind))
            if child:
                out.append(edge(child_kind, child, "consumption", **extra))
    elif kind == "part" and ctx is not None:
        lot = _text(ctx.get("lot"))
        if lot:
            out.append(edge("lot", lot, "part"))
    return out


def _level(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise _Invalid(Reason.BAD_ENVELOPE, f"{name}: expected a string, got {_short(value)}")
    why = invalid_level(value)
    if why:
        raise _Invalid(Reason.BAD_ENVELOPE, f"{name}: {why}")
    return value


def _seq(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    if not _is_int(value) or not 1 <= value <= MAX_SEQ:
        raise _Invalid(Reason.BAD_ENVELOPE, f"{name}: expected a seq, got {_short(value)}")
    return int(value)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    # Finite by construction: the parser refuses NaN and Infinity; huge ints overflow floats.
    return (_is_int(value) and abs(value) < 2**53) or isinstance(value, float)


def _text(value: Any) -> str | None:
    return _clean(value) if isinstance(value, str) and value else None


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean(value: str) -> str:
    """A copy of ``value`` any database can index: lone surrogates and NUL become U+FFFD."""
    if _encodable(value) and "\0" not in value:
        return value
    fixed = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return fixed.replace("\0", "\ufffd")


def _dump(record: dict[str, Any]) -> str:
    """The record body as compact JSON text (the same record, not necessarily the same bytes)."""
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    # Lone surrogates cannot be written as UTF-8; escaped they are valid JSON text.
    return text if _encodable(text) else json.dumps(record, separators=(",", ":"))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
