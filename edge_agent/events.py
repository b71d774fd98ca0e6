"""The agent's log of events worth a person's attention: bad part records, rejected scans,
counter gaps, unobserved windows, scans a station gate refused or flagged. Readings never log;
a device that is down has its own line (``drivers.state``), so what its outage does to records
is not repeated here."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kernel.model import RecordDraft, RecordKind

log = logging.getLogger("edge_agent.daemon")  # the name operators filter on


class EventLog:
    def __init__(self, device_down: Callable[[str], bool]) -> None:
        self._device_down = device_down

    def note(self, d: RecordDraft) -> None:
        """One log line per event worth a person's attention; readings never log."""
        b = d.body
        extra = {"station": d.station, "serial": b.get("serial") or b["ctx"].get("serial")}
        if d.kind is RecordKind.PART:
            if b["quality"] != "good":
                log.warning(
                    "station %s: part record %s: %s",
                    d.station,
                    b["quality"],
                    b.get("error"),
                    extra=extra,
                )
        elif d.kind is RecordKind.SCAN:
            if b["status"] != "rejected" or self._device_down(b["device"]):
                # A device that is down has had its own ERROR line; its outage reaches scan
                # points as rejected scans, which are no news to a reader of the log.
                return
            text = b.get("text")
            log.warning(
                "station %s: scan rejected: %s%s",
                d.station,
                b.get("error"),
                "" if text is None else f" ({text!r})",
                extra=extra | {"device": b["device"]},
            )
        elif d.kind is RecordKind.GAP:
            log.warning(
                "station %s: part counter went from %s to %s: %s part(s) without a record",
                d.station,
                b["previous"],
                b["counter"],
                b["missed"] if b["missed"] is not None else "unknown (counter reset)",
                extra=extra,
            )
        elif d.kind is RecordKind.GATE:
            if b["decision"] != "allowed":
                log.warning(
                    "station %s: gate %s scan %r: %s",
                    d.station,
                    b["decision"],
                    b.get("text"),
                    b.get("reason"),
                    extra=extra | {"device": b.get("device")},
                )
        elif d.kind is RecordKind.UNOBSERVED:
            log.warning(
                "station %s: device %s: changes of %s since %s may be missing: %s",
                d.station,
                b["device"],
                ", ".join(b["points"]),
                b["since"] or "their previous value",
                b["reason"],
                extra=extra,
            )
