"""The trace store's envelope checks (pure): every malformed message rejected with its
reason, a good message's rows, edges and range, v1 messages, confirm/order, and the store's
config and broker option parsing.

Messages are built by ``tests.store_helpers`` as the agent builds them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.store_helpers import (
    AGENT,
    PREFIX,
    body,
    envelope,
    readings,
    topic,
)
from trace_store.config import StoreConfig, parse_broker
from trace_store.envelope import Accepted, Range, Reason, Rejection, parse

# ---- envelope checks (pure) ------------------------------------------------------------------

GOOD = readings([3, 5, 8])


def _bad_cases() -> list[tuple[str, str, bytes, Reason]]:
    return [
        ("oversized", topic(), envelope(readings(range(1, 40))), Reason.OVERSIZED),
        ("not utf-8", topic(), b'{"schema":"\xff\xfe"}', Reason.NOT_UTF8),
        ("not json", topic(), b'{"schema": ', Reason.NOT_JSON),
        ("not an object", topic(), b"[1, 2]", Reason.NOT_JSON),
        ("NaN", topic(), envelope(GOOD).replace(b"20.5", b"NaN"), Reason.NOT_JSON),
        ("unknown schema", topic(), envelope(GOOD, schema="other.records"), Reason.UNKNOWN_SCHEMA),
        ("unknown version", topic(), envelope(GOOD, v=3), Reason.UNKNOWN_VERSION),
        ("v is a string", topic(), envelope(GOOD, v="1"), Reason.UNKNOWN_VERSION),
        ("topic site", topic(site="plant-b"), envelope(GOOD), Reason.TOPIC_MISMATCH),
        ("topic station", topic("op20"), envelope(GOOD), Reason.TOPIC_MISMATCH),
        ("no agent", topic(), envelope(GOOD, agent=...), Reason.BAD_ENVELOPE),
        ("agent has /", topic(), envelope(GOOD, agent="a/b"), Reason.BAD_ENVELOPE),
        ("first_seq text", topic(), envelope(GOOD, first_seq="3"), Reason.BAD_ENVELOPE),
        ("count bool", topic(), envelope(GOOD, count=True), Reason.BAD_ENVELOPE),
        ("count too big", topic(), envelope(GOOD, count=4), Reason.COUNT_MISMATCH),
        ("no records", topic(), envelope([], station="op10", count=0), Reason.COUNT_MISMATCH),
        (
            "not in seq order",
            topic(),
            envelope([body(5), body(3), body(8)], first_seq=5, last_seq=8),
            Reason.SEQ_ORDER,
        ),
        ("first_seq lies", topic(), envelope(GOOD, first_seq=2), Reason.SEQ_BOUNDS),
        ("last_seq lies", topic(), envelope(GOOD, last_seq=7), Reason.SEQ_BOUNDS),
        (
            "record of another station",
            topic(),
            envelope([body(3), body(5, station="op20")], station="op10"),
            Reason.STATION_MISMATCH,
        ),
        ("record without ts", topic(), envelope([{**body(3), "ts": None}]), Reason.BAD_RECORD),
        (
            "record seq text",
            topic(),
            envelope([{**body(3), "seq": "3"}], first_seq=3, last_seq=3),
            Reason.BAD_RECORD,
        ),
        ("record not object", topic(), envelope([body(3), 7], last_seq=3), Reason.BAD_RECORD),
        (
            "seq above bigint",
            topic(),
            envelope([body(2**63)], first_seq=1, last_seq=1),
            Reason.BAD_RECORD,
        ),
        ("salvaged bad", topic(), envelope([body(3, salvaged={"seq": "x"})]), Reason.BAD_RECORD),
        ("range not object", topic(), envelope(GOOD, range=[0, 8, 3]), Reason.BAD_RANGE),
        ("range before message", topic(), envelope(GOOD, rng=(3, 8, 3)), Reason.BAD_RANGE),
        ("range ends early", topic(), envelope(GOOD, rng=(0, 5, 3)), Reason.BAD_RANGE),
        ("range count too small", topic(), envelope(GOOD, rng=(0, 8, 2)), Reason.BAD_RANGE),
        ("range count impossible", topic(), envelope(GOOD, rng=(0, 8, 9)), Reason.BAD_RANGE),
    ]


@pytest.mark.parametrize(
    ("case", "where", "payload", "reason"), [pytest.param(*c, id=c[0]) for c in _bad_cases()]
)
def test_bad_messages_are_rejected_with_their_reason(
    case: str, where: str, payload: bytes, reason: Reason
) -> None:
    result = parse(where, payload, prefix=PREFIX, max_bytes=2048)
    assert isinstance(result, Rejection), case
    assert result.reason is reason, f"{case}: {result.detail}"
    assert result.detail


def test_absurd_nesting_is_not_json_rather_than_a_crash() -> None:
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    result = parse(topic(), deep, prefix=PREFIX, max_bytes=1 << 20)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.NOT_JSON


def test_agent_outside_the_allowlist_is_foreign() -> None:
    result = parse(
        topic(), envelope(GOOD), prefix=PREFIX, max_bytes=2048, allowed_agents=frozenset({"other"})
    )
    assert isinstance(result, Rejection)
    assert (result.reason, result.agent) == (Reason.AGENT_NOT_ALLOWED, AGENT)


def test_a_good_message_gives_rows_edges_and_its_range() -> None:
    records = [
        body(
            10, "context", key="lot", value="L1", previous=None, ctx={"serial": "SN1", "lot": "L1"}
        ),
        body(
            11,
            "consumption",
            serial="SN1",
            lot="L2",
            component="C9",
            quantity=2,
            unit="pcs",
            rule="r",
            quality="good",
        ),
        body(
            12,
            "part",
            serial="SN1",
            result="ok",
            quality="good",
            values={},
            ctx={"serial": "SN1", "lot": "L1"},
        ),
        body(
            13,
            "scan",
            text="\u0000garbled\ud800",
            status="rejected",
            ctx={"serial": "SN\u0000X", "lot": None},
        ),
        body(14, "reading", salvaged={"seq": 4, "journal": "old.db"}),
    ]
    result = parse(topic(), envelope(records, rng=(9, 20, 7)), prefix=PREFIX, max_bytes=1 << 20)
    assert isinstance(result, Accepted), result
    assert result.range == Range(9, 20, 7)
    assert result.message_id == ("op10", 10)
    assert [r.seq for r in result.rows] == [10, 11, 12, 13, 4]  # salvaged: its original key
    assert [r.serial for r in result.rows] == ["SN1", "SN1", "SN1", "SN\ufffdX", None]
    assert json.loads(result.rows[3].body)["text"] == "\u0000garbled\ud800"  # body keeps it
    assert [(e.parent, e.child_kind, e.child, e.how, e.quantity) for e in result.edges] == [
        ("SN1", "lot", "L2", "consumption", 2.0),
        ("SN1", "component", "C9", "consumption", 2.0),
        ("SN1", "lot", "L1", "part", None),
    ]


def test_a_v1_message_from_an_agent_not_yet_upgraded_is_accepted() -> None:
    """v1 agents send one value per ``reading`` record; v2 only added ``readings``."""
    records = [body(3, "reading"), body(4, "context", key="serial", value="SN1", previous=None)]
    result = parse(topic(), envelope(records, v=1), prefix=PREFIX, max_bytes=1 << 20)
    assert isinstance(result, Accepted), result
    assert [(r.seq, r.kind) for r in result.rows] == [(3, "reading"), (4, "context")]


def test_confirm_and_order_say_whether_a_message_may_be_held() -> None:
    def holdable(**fields: Any) -> bool:
        result = parse(
            topic(), envelope(GOOD, rng=(0, 8, 3), **fields), prefix=PREFIX, max_bytes=4096
        )
        assert isinstance(result, Accepted), result
        return result.holdable

    assert holdable(confirm="store", order="in_order")
    assert holdable(confirm="store")  # no order: in_order, as before the field existed
    assert not holdable()  # an agent older than both fields: puback, in_order
    assert not holdable(confirm="puback", order="in_order")
    assert not holdable(confirm="store", order="live_first")
    # Advisory fields: an odd value never rejects the records, it only keeps them from waiting.
    assert not holdable(confirm="store", order=7)
    assert not holdable(confirm=["store"], order="in_order")
    no_range = parse(topic(), envelope(GOOD, confirm="store"), prefix=PREFIX, max_bytes=4096)
    assert isinstance(no_range, Accepted)
    assert not no_range.holdable  # nothing says where it lies relative to the watermark


def test_broker_option_parsing() -> None:
    assert parse_broker("mq.local") == ("mq.local", 1883)
    assert parse_broker("mq.local:8883") == ("mq.local", 8883)
    assert parse_broker("[::1]:1884") == ("::1", 1884)
    for bad in ("mq:port", ":1883", "mq:0", "[::1"):
        with pytest.raises(ValueError, match="broker"):
            parse_broker(bad)


def test_config_lists_every_problem() -> None:
    with pytest.raises(ValueError, match="port") as info:
        StoreConfig(port=0, topic_prefix="a/+", store_id="x/y", password="p")
    text = str(info.value)
    assert "topic prefix" in text
    assert "store id" in text
    assert "username" in text
