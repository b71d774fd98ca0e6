"""Reading a request's parameters: each checked, and a bad one answered with 400 naming it.

Nothing a user types is ever put into SQL text: parameters go to the storage's queries as
bound values. These checks are about clear answers (a time that is not a time, a page that
is not a number, a serial too long to be one), not about safety.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from trace_store.storage import PageKey
from trace_store.web.plant_time import PlantTime

MAX_ID = 256  # characters in a serial, lot, station or operator
MAX_PAGE = 100_000


class BadParameter(ValueError):
    """A request parameter is malformed: HTTP 400, the message names it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"parameter '{name}': {problem}")
        self.name = name


class NotFound(LookupError):
    """Nothing known by that name: HTTP 404 with this message."""


def text(params: Mapping[str, str], name: str, *, required: bool = False) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        if required:
            raise BadParameter(name, "missing")
        return None
    if len(value) > MAX_ID:
        raise BadParameter(name, f"longer than {MAX_ID} characters")
    if any(ord(c) < 32 for c in value):
        raise BadParameter(name, "holds control characters")
    return value


def required(params: Mapping[str, str], name: str) -> str:
    value = text(params, name, required=True)
    assert value is not None
    return value


def number(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw.replace(",", ".", 1) if raw.count(",") == 1 and "." not in raw else raw)
    except ValueError:
        raise BadParameter(name, f"{_quote(raw)} is not a number") from None
    if not math.isfinite(value):
        raise BadParameter(name, "must be a finite number")
    return value


def page(params: Mapping[str, str], name: str = "page") -> int:
    raw = params.get(name, "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise BadParameter(name, f"{_quote(raw)} is not a page number (1..{MAX_PAGE})")
    return int(raw)


def choice(params: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = params.get(name, "").strip() or choices[0]
    if raw not in choices:
        raise BadParameter(name, f"{_quote(raw)} is not one of {', '.join(choices)}")
    return raw


def when(params: Mapping[str, str], name: str, plant: PlantTime | None = None) -> str | None:
    """A time (``2026-11-21T10:00``, with seconds, a ``Z`` or an offset; without one, the
    plant's time zone) as the wire format's text, which orders as time does."""
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise BadParameter(name, f"{_quote(raw)} is not a time like 2026-11-21T10:00") from None
    return wire_time((plant or PlantTime()).to_utc(moment))


def time_window(
    params: Mapping[str, str],
    plant: PlantTime | None,
    station: str,
    last_ts: Callable[[str], str | None],
    hours: float,
) -> tuple[str, str, bool]:
    """(since, until, live) from ``from`` and ``to``: without ``to``, up to just after the
    station's newest part (live); without ``from``, ``hours`` before ``until``."""
    since, until = when(params, "from", plant), when(params, "to", plant)
    live = until is None
    if until is None:
        last = last_ts(station)
        if last is None:
            raise NotFound(f"No part records at station {station!r}.")
        until = shifted(last, timedelta(seconds=1))
    if since is None:
        since = shifted(until, timedelta(hours=-hours))
    if since >= until:
        raise BadParameter("from", "must be before 'to'")
    return since, until, live


def wire_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_wire(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def shifted(ts: str, delta: timedelta) -> str:
    return wire_time(parse_wire(ts) + delta)


def cursor(params: Mapping[str, str], name: str = "after") -> PageKey | None:
    """A keyset page cursor: the last (ts, agent, epoch, seq) of the page before."""
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        padded = raw + "=" * (-len(raw) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if isinstance(key, list) and len(key) == 3:  # a link from before epochs were in it
            key = [key[0], key[1], "", key[2]]
        ts, agent, epoch, seq = key
        if not (
            isinstance(ts, str)
            and isinstance(agent, str)
            and isinstance(epoch, str)
            and type(seq) is int
        ):
            raise ValueError(raw)
    except (ValueError, TypeError):
        raise BadParameter(name, "not a page cursor from this workbench") from None
    return ts, agent, epoch, seq


def encode_cursor(key: PageKey) -> str:
    data = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _quote(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "...")
