"""OPC UA driver: a subscription for changes, one Read for snapshots, writes for handshakes.

A streaming driver (``runners.run_streaming`` owns state, backoff and outage records). A
connection is built from scratch: a session, the namespace URIs looked up (indexes can change
across a server restart), a subscription with explicit publishing interval, keep-alive and
lifetime counts, and one monitored item per ``on_change`` point with its own sampling
interval, queue size and filter (asyncua's defaults, 50 ms and a queue of 1, lose short
pulses). The server sends each item's current value first.

Recovery follows OPC UA Part 4 6.7 (``session``): a lost connection makes the device down at
once; asyncua reactivates the session on a new channel, transfers the subscription and
republishes what was missed, and the device is up again with no change lost. When the server
no longer has the session (it restarted), or it is not back within the session timeout, the
stream ends and the runner builds the connection again from scratch, with backoff; the outage
record then marks since when changes may have been missed.

A point whose node does not exist, or whose monitored item the server refuses, is a BAD value
with the reason and is tried again every ``retry_interval``; the other points are not
affected. A subscription that falls silent (no publish response within its keep-alive
window) ends the stream the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import (
    DataChangeEvent,
    OverflowPolicy,
    StatusChangeEvent,
    SubEvent,
    Subscription,
)

from drivers.base import StreamingDriver
from drivers.opcua import nodes, security, session, values
from drivers.opcua.config import DataChangeTrigger, OpcUaDevice, OpcUaPoint, OpcUaReport
from drivers.opcua.errors import describe
from drivers.registry import DriverContext
from drivers.runners import reraise_swallowed_cancel
from kernel.errors import ConnectError, ReadError, WriteError
from kernel.model import DeviceState, Observation, Quality, Unobserved, Value

log = logging.getLogger(__name__)

# asyncua logs every request and reconnect step at INFO; the runner logs the device
# transitions that matter, once. Set here, where asyncua is first imported for a device.
logging.getLogger("asyncua").setLevel(logging.WARNING)

QUEUE = 100_000
"""Notifications asyncua may hold for the stream. Past it the connection is dropped (and
rebuilt) rather than a notification silently: nothing is lost unnoticed."""
STALE_MARGIN = 1.25
"""Keep-alive windows without any publish response after which the subscription is dead."""
TRIGGERS = {
    DataChangeTrigger.STATUS: ua.DataChangeTrigger.Status,
    DataChangeTrigger.STATUS_VALUE: ua.DataChangeTrigger.StatusValue,
    DataChangeTrigger.STATUS_VALUE_TIMESTAMP: ua.DataChangeTrigger.StatusValueTimestamp,
}


class OpcUaDriver(StreamingDriver):
    """One OPC UA server."""

    def __init__(self, device: OpcUaDevice, context: DriverContext | None = None) -> None:
        super().__init__(device.name, device.backoff_initial, device.backoff_max)
        self.device = device
        self._points = {p.name: p for p in device.points}
        self._subscribed = [p for p in device.points if p.report is OpcUaReport.ON_CHANGE]
        self._handle_of = {p.name: i + 1 for i, p in enumerate(device.points)}
        self._point_of = {h: self._points[n] for n, h in self._handle_of.items()}
        self._client: Client | None = None
        self._sub: Subscription | None = None
        self._lost: asyncio.Event | None = None
        self._namespaces: list[str] = []
        self._nodes: dict[str, ua.NodeId] = {}
        self._pending: dict[str, str] = {}  # on_change point -> why it has no monitored item
        self._unresolved: dict[str, str] = {}  # any point -> why its node is not known
        self._variant_types: dict[str, ua.VariantType] = {}  # for writes
        self._warned_index = False
        # Since when, and why, changes may have been missed (a subscription lost and not
        # transferred); stated on the first value of each point once subscribed again.
        self._blind: Unobserved | None = None
        self._awaiting: set[str] = set()  # points whose first value after that is still due
        self._heard_at: float | None = None  # last publish before a loss being resumed (wall)

    # -- the connection -------------------------------------------------------------------

    async def open(self) -> None:
        await self.close()
        d = self.device
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            lost.set()

        client = session.make_client(d, on_lost)
        try:
            await security.apply(client, d)
            await client.connect()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await client.disconnect()
            if isinstance(exc, Exception):
                raise ConnectError(self.name, describe(exc, d)) from exc
            raise
        session.bound_republish(client)
        self._client, self._lost = client, lost
        try:
            self._namespaces = list(await client.get_namespace_array())
            self._nodes, self._unresolved = {}, {}
            await self._resolve(self.device.points)
            self._sub = await self._subscribe(client)
            self._pending = await self._create_items(self._subscribed)
            if self._blind is not None:
                self._awaiting = {p.name for p in self._subscribed} - self._pending.keys()
        except ConnectError:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise ConnectError(self.name, describe(exc, d)) from exc

    async def close(self) -> None:
        client, sub, self._client, self._sub = self._client, self._sub, None, None
        if sub is not None:
            self._note_loss(sub, "the connection was closed")
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), self.device.timeout)
        except Exception:  # close() must never raise; a dead server is still let go of
            log.debug("device %s: error while disconnecting", self.name, exc_info=True)
            with contextlib.suppress(Exception):
                client.disconnect_socket()

    def point_names(self) -> Sequence[str]:
        return [p.name for p in self.device.points]

    def _note_loss(self, sub: Subscription, why: str) -> None:
        """Remember that the subscription is gone: every change after its last publish
        response may be missed until a new subscription sends the current values. The first
        loss counts (a rebuild that fails again does not move the start)."""
        if self._blind is not None:
            return
        # Taken when the loss was noticed if it was: asyncua's reconnect may have published
        # on a recreated subscription since, which is no evidence for the lost window.
        since = self._heard_at if self._heard_at is not None else _wall(sub.last_publish_at)
        self._heard_at = None
        self._blind = Unobserved(
            since,
            f"subscription rebuilt ({why}): changes in this window may not have reached the "
            "agent; the values that follow are the current ones",
        )
        self._awaiting = set()

    # -- streaming --------------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[Sequence[Observation]]:
        client, sub, lost = self._client, self._sub, self._lost
        if client is None or sub is None or lost is None:
            raise ConnectError(self.name, "not connected")
        failed = self._failures()
        if failed:
            yield failed
        try:
            async for batch in self._stream(client, sub, lost):
                yield batch
        except ConnectError as exc:
            self._note_loss(sub, exc.reason)
            raise

    async def _stream(
        self, client: Client, sub: Subscription, lost: asyncio.Event
    ) -> AsyncIterator[Sequence[Observation]]:
        window = self.device.publishing_interval * self.device.keepalive_count
        retry_at = time.monotonic() + self.device.retry_interval
        resuming: session.Resumption | None = None
        subscription_id = sub.subscription_id
        while True:
            # next_event is asyncio.wait_for, which on 3.11 can swallow a cancellation that
            # lands as an event arrives; with events every few ms the stream would never end.
            reraise_swallowed_cancel()
            tick = min(window / 2, 1.0, max(0.0, retry_at - time.monotonic()) + 0.001)
            event = await sub.next_event(timeout=tick)
            batch: list[Observation] = []
            ended: ConnectError | None = None
            try:
                if event is not None:  # received before any loss noticed below: first
                    now = time.time()  # one arrival: one agent time, one record per station
                    for each in (event, *_drain(sub)):
                        self._take(each, batch, now)
            except ConnectError as exc:  # the server ended the subscription: what came before
                ended = exc  # that is recorded, then the stream ends
            if batch:
                yield batch
            if ended is not None:
                raise ended
            if lost.is_set() and resuming is None:
                lost.clear()
                resuming = session.Resumption()
                yield self._lost_connection()
            if sub.subscription_id != subscription_id:
                # asyncua recreated it in a new session, with NodeIds of the old server run.
                raise ConnectError(
                    self.name,
                    "the server no longer had the session (restarted?): subscribing again",
                )
            if resuming is not None:
                resuming = self._resumed(client, resuming)
            elif event is not None and self._heard_at is not None:
                # A notification of the same subscription after the session came back: it was
                # transferred, the missed ones republished. Nothing to state.
                self._heard_at = None
            if resuming is not None:
                continue  # no keep-alives and no retries while the session is being resumed
            self._check_alive(sub, window)
            if (self._pending or self._unresolved) and time.monotonic() >= retry_at:
                retry_at = time.monotonic() + self.device.retry_interval
                again = await self._retry()
                if again:
                    yield again

    def _lost_connection(self) -> list[Observation]:
        """The device is down while asyncua resumes the session: recorded now, because until
        the session is back nothing is known of the points."""
        reason = "connection to the server lost; resuming the session"
        if self._sub is not None:
            self._heard_at = _wall(self._sub.last_publish_at)
        self.status.reads_failed += 1
        self.status.set_state(DeviceState.DOWN, reason)
        return self.outage(reason)

    def _resumed(
        self, client: Client, resuming: session.Resumption
    ) -> session.Resumption | None:
        """None once the session is back (its subscription transferred: the missed
        notifications are republished as changes; had it been recreated instead, the stream
        notices the new subscription id); raises ConnectError when the session is not back
        within the session timeout, so the runner subscribes from scratch."""
        if session.connected(client):
            self.status.set_state(DeviceState.UP)
            log.info(
                "device %s: session resumed, subscription transferred; missed changes "
                "republished", self.name, extra={"device": self.name},
            )  # fmt: skip
            return None
        waited = asyncio.get_running_loop().time() - resuming.since
        if waited > self.device.session_timeout:
            raise ConnectError(self.name, f"session not resumed within {waited:.0f}s")
        return resuming

    def _take(self, event: SubEvent, batch: list[Observation], now: float) -> None:
        if isinstance(event, DataChangeEvent):
            handle = event.data.subscription_data.client_handle
            point = self._point_of.get(handle) if handle is not None else None
            if point is not None:
                value = event.data.monitored_item.Value
                obs = values.observation(self.name, point, value, now)
                if point.name in self._awaiting:
                    self._awaiting.discard(point.name)
                    obs.unobserved = self._blind
                    if not self._awaiting:
                        self._blind = None
                batch.append(obs)
        elif isinstance(event, StatusChangeEvent):
            status = event.notification.Status
            if not status.is_good():
                raise ConnectError(self.name, f"the server ended the subscription ({status.name})")

    def _check_alive(self, sub: Subscription, window: float) -> None:
        last = sub.last_publish_at
        if last is not None and time.monotonic() - last > max(window * STALE_MARGIN, 1.0):
            raise ConnectError(
                self.name,
                f"no publish response for {time.monotonic() - last:.1f}s (keep-alive window "
                f"{window:g}s): the subscription is dead",
            )

    # -- snapshots and writes ---------------------------------------------------------------

    async def read_points(self, names: Sequence[str]) -> list[Observation]:
        """One Read service call for all ``names``: one consistent snapshot. A point whose node
        is unknown, or that the server refuses, is BAD with the reason; the others are read."""
        client = self._client
        if client is None:
            raise ConnectError(self.name, "not connected")
        now = time.time()
        out: dict[str, Observation] = {}
        wanted = [n for n in names if n in self._nodes]
        for n in names:
            if n not in self._nodes:
                why = self._unresolved.get(n, "node not resolved")
                out[n] = self._bad(n, why, now)
        if wanted:
            try:
                results = await client.read_attributes(
                    [client.get_node(self._nodes[n]) for n in wanted], ua.AttributeIds.Value
                )
            except (TimeoutError, ConnectionError, OSError) as exc:
                why = describe(exc, self.device)
                raise ConnectError(self.name, f"snapshot read failed: {why}") from exc
            except Exception as exc:
                why = describe(exc, self.device)
                raise ReadError(self.name, f"snapshot read failed: {why}") from exc
            now = time.time()
            for n, dv in zip(wanted, results, strict=True):
                out[n] = values.observation(self.name, self._points[n], dv, now)
        return [out[n] for n in names]

    async def write(self, point: str, value: Value) -> None:
        client = self._client
        node = self._nodes.get(point)
        if client is None:
            raise ConnectError(self.name, "not connected")
        if node is None:
            why = self._unresolved.get(point, "node not resolved")
            raise WriteError(self.name, f"point {point!r}: {why}")
        target = client.get_node(node)
        try:
            kind = self._variant_types.get(point)
            if kind is None:
                kind = await target.read_data_type_as_variant_type()
                self._variant_types[point] = kind
            variant = ua.Variant(_as(kind, value), kind)
            await target.write_value(ua.DataValue(variant))
        except ua.UaStatusCodeError as exc:
            why = describe(exc, self.device)
            raise WriteError(self.name, f"write {point}={value!r} refused: {why}") from exc
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise ConnectError(self.name, f"write {point}: {describe(exc, self.device)}") from exc
        except (TypeError, ValueError) as exc:
            raise WriteError(self.name, f"write {point}={value!r}: {exc}") from exc

    # -- internals --------------------------------------------------------------------------

    async def _resolve(self, points: Sequence[OpcUaPoint]) -> None:
        """NodeIds of ``points`` with the session's namespace indexes; each that cannot be
        resolved now goes to ``_unresolved`` with the reason."""
        client = self._client
        assert client is not None
        for p in points:
            self._nodes.pop(p.name, None)
            self._unresolved.pop(p.name, None)
        resolved = await nodes.resolve(client, self.device, points, self._namespaces)
        self._nodes.update(resolved.nodes)
        self._unresolved.update(resolved.failed)
        if resolved.index_only and not self._warned_index:
            self._warned_index = True
            log.warning(
                "device %s: points %s address nodes by namespace index (ns=); indexes can change "
                "when the server restarts: prefer nsu=<namespace URI>",
                self.name,
                ", ".join(resolved.index_only),
                extra={"device": self.name},
            )

    async def _subscribe(self, client: Client) -> Subscription:
        d = self.device
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = d.publishing_interval * 1000
        params.RequestedLifetimeCount = ua.UInt32(d.lifetime_count)
        params.RequestedMaxKeepAliveCount = ua.UInt32(d.keepalive_count)
        params.MaxNotificationsPerPublish = ua.UInt32(0)
        params.PublishingEnabled = True
        params.Priority = ua.Byte(0)
        return await client.create_subscription(
            params, None, queue_maxsize=QUEUE, overflow=OverflowPolicy.DISCONNECT
        )

    async def _create_items(self, points: Sequence[OpcUaPoint]) -> dict[str, str]:
        """Monitored items for ``points``; returns those without one, with the reason."""
        sub = self._sub
        assert sub is not None
        failed: dict[str, str] = {}
        requests: list[tuple[OpcUaPoint, ua.MonitoredItemCreateRequest]] = []
        for p in points:
            node = self._nodes.get(p.name)
            if node is None:
                failed[p.name] = self._unresolved.get(p.name, "node not resolved")
            else:
                requests.append((p, self._item(p, node)))
        if requests:
            results = await sub.create_monitored_items([r for _, r in requests])
            for (p, _), result in zip(requests, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    failed[p.name] = f"monitored item refused: {result.name}"
        return failed

    def _item(self, p: OpcUaPoint, node: ua.NodeId) -> ua.MonitoredItemCreateRequest:
        read = ua.ReadValueId()
        read.NodeId = node
        read.AttributeId = ua.AttributeIds.Value
        params = ua.MonitoringParameters()
        params.ClientHandle = ua.UInt32(self._handle_of[p.name])
        params.SamplingInterval = p.sampling_interval * 1000
        params.QueueSize = ua.UInt32(p.queue_size)
        params.DiscardOldest = p.discard_oldest
        change = ua.DataChangeFilter()
        change.Trigger = TRIGGERS[p.trigger]
        if p.deadband_absolute is not None:
            change.DeadbandType = ua.UInt32(ua.DeadbandType.Absolute)
            change.DeadbandValue = p.deadband_absolute
        elif p.deadband_percent is not None:
            change.DeadbandType = ua.UInt32(ua.DeadbandType.Percent)
            change.DeadbandValue = p.deadband_percent
        params.Filter = change
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = read
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = params
        return request

    def _failures(self) -> list[Observation]:
        """A BAD value for every point that is not being watched now, with the reason."""
        now = time.time()
        failed = {**self._unresolved, **self._pending}
        return [self._bad(n, why, now) for n, why in failed.items()]

    async def _retry(self) -> list[Observation]:
        """Resolve and subscribe again the points that failed (a node may appear later, a
        namespace be registered later). Those still failing are reported again only if the
        reason changed: their BAD value stands until then."""
        client = self._client
        assert client is not None
        before = {**self._unresolved, **self._pending}
        self._namespaces = list(await client.get_namespace_array())
        points = [self._points[n] for n in before]
        await self._resolve(points)
        self._pending = await self._create_items(
            [p for p in points if p.report is OpcUaReport.ON_CHANGE]
        )
        now_failing = {**self._unresolved, **self._pending}
        fixed = [n for n in before if n not in now_failing]
        if fixed:
            log.info(
                "device %s: points %s resolved and watched now", self.name, ", ".join(fixed),
                extra={"device": self.name},
            )  # fmt: skip
        now = time.time()
        return [self._bad(n, why, now) for n, why in now_failing.items() if before.get(n) != why]

    def _bad(self, point: str, why: str, now: float) -> Observation:
        p = self._points[point]
        return Observation(self.name, point, None, Quality.BAD, ts=now, unit=p.unit, error=why)


def _wall(monotonic: float | None) -> float | None:
    """A ``time.monotonic()`` instant as wall-clock time, for records."""
    return None if monotonic is None else time.time() - (time.monotonic() - monotonic)


def _drain(sub: Subscription) -> list[SubEvent]:
    """Events already queued behind the first, so that one publish makes one batch. asyncua
    exposes no non-blocking get; its queue is read directly (iterator mode)."""
    queue: Any = getattr(sub, "_event_queue", None)
    out: list[SubEvent] = []
    while queue is not None and not queue.empty():
        item = queue.get_nowait()
        if item is None:  # the subscription was closed
            queue.put_nowait(None)
            break
        out.append(item)
    return out


def _as(kind: ua.VariantType, value: Value) -> Any:
    """``value`` in the Python type asyncua encodes ``kind`` from."""
    if kind is ua.VariantType.Boolean:
        return bool(value)
    if kind in (ua.VariantType.Float, ua.VariantType.Double):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"a {kind.name} node takes a number")
        return float(value)
    if kind.name.startswith(("Int", "UInt", "SByte", "Byte")):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise TypeError(f"a {kind.name} node takes a whole number")
    if kind is ua.VariantType.String:
        return "" if value is None else str(value)
    raise TypeError(f"a {kind.name} node is not written by the agent")
