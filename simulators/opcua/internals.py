"""Where the simulator reaches into asyncua 2.1's server, all in one file.

Three services are replaced on the simulator's own :class:`StationInternalServer` (never by
patching asyncua's classes, so another asyncua server in the same process is untouched), and
it cleans up after ``Server.stop()`` (:meth:`StationInternalServer.close_sessions`):

- Write: a station variable other than ``data_taken`` answers Bad_NotWritable (asyncua says
  Bad_UserAccessDenied for any variable whose access level forbids writing), and a good write
  to a watched node (``data_taken``) is handed to the simulator before the Write response
  goes out, as a PLC acts on a coil write.
- Republish: answered as OPC UA Part 4 specifies (see :class:`HonestSubscriptionService`).
- Silence (``set_silent``): every client connection stops being read, new ones from
  their first byte, through asyncua's list of transports (:class:`_Transports`).
- The standard address space: a copy of a template built once per process (in a thread of
  our own), instead of asyncua rebuilding it on every start (1.5-2 s of CPU) in the default
  executor's threads, which outlive the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import (
    AddressSpace,
    AttributeService,
    AttributeValue,
    NodeData,
    NodeManagementService,
)
from asyncua.server.internal_server import InternalServer
from asyncua.server.standard_address_space import standard_address_space
from asyncua.server.subscription_service import SubscriptionService
from asyncua.server.user_managers import UserManager

T = TypeVar("T")
_ADMIN = User(role=UserRole.Admin)  # asyncua's default for server-side writes


@dataclass
class StationWrites:
    """What clients may write: ``read_only`` nodes are refused, ``watched`` ones reported."""

    read_only: set[ua.NodeId] = field(default_factory=set)
    watched: dict[ua.NodeId, Callable[[ua.DataValue], Awaitable[None]]] = field(
        default_factory=dict
    )


class StationAttributeService(AttributeService):  # type: ignore[misc]  # asyncua: Any
    def __init__(self, aspace: AddressSpace, writes: StationWrites) -> None:
        super().__init__(aspace)
        self.writes = writes

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            if item.NodeId in self.writes.read_only:
                results.append(ua.StatusCode(ua.StatusCodes.BadNotWritable))
                continue
            one = ua.WriteParameters(NodesToWrite=[item])
            [status] = await super().write(one, user)
            results.append(status)
            watcher = self.writes.watched.get(item.NodeId)
            if watcher is not None and status.is_good():
                await watcher(item.Value)
        return results


class HonestSubscriptionService(SubscriptionService):  # type: ignore[misc]
    """Republish as OPC UA Part 4, 5.13.6 (Republish) specifies it.

    asyncua 2.1's server answers a Republish for a message it does not hold (already
    acknowledged, never sent, or an unknown subscription) with a Good response carrying an
    empty NotificationMessage (``SubscriptionService.republish`` and
    ``InternalSubscription.republish``). The specification's answers are the service results
    Bad_MessageNotAvailable ("the requested message is no longer available") and
    Bad_SubscriptionIdInvalid. asyncua's own client replays gaps after a reconnect by
    republishing sequence numbers until it gets Bad_MessageNotAvailable, so against asyncua's
    server it never stops. Raising ServiceError makes asyncua's processor send a ServiceFault
    with that status.

    Subscription ids also continue from ``first_id`` instead of restarting at 78 with every
    server, so after a simulated restart a client's TransferSubscriptions for its old id
    cannot land on another client's new subscription.
    """

    def __init__(self, aspace: AddressSpace, iserver: InternalServer | None, first_id: int) -> None:
        super().__init__(aspace, iserver)
        self._sub_id_counter = first_id - 1

    @property
    def next_id(self) -> int:
        return self._sub_id_counter + 1

    def republish(self, params: ua.RepublishParameters) -> ua.NotificationMessage:
        if params.SubscriptionId not in self.subscriptions:
            raise ServiceError(ua.StatusCodes.BadSubscriptionIdInvalid)
        message = super().republish(params)
        if message.SequenceNumber != params.RetransmitSequenceNumber:
            raise ServiceError(ua.StatusCodes.BadMessageNotAvailable)
        return message


class StationInternalServer(InternalServer):  # type: ignore[misc]
    """asyncua's InternalServer with the services above."""

    time_task: asyncio.Task[None] | None  # asyncua's, declared for the type checker

    def __init__(
        self, user_manager: UserManager, writes: StationWrites, first_subscription_id: int
    ) -> None:
        super().__init__(user_manager=user_manager)
        self.attribute_service = StationAttributeService(self.aspace, writes)
        subscriptions = HonestSubscriptionService(self.aspace, self, first_subscription_id)
        self.subscription_service = subscriptions
        self.isession.subscription_service = subscriptions
        self.station_subscriptions = subscriptions
        self.asyncio_transports = _Transports()

    @property
    def silent(self) -> bool:
        return self.asyncio_transports.silent

    def set_silent(self, silent: bool) -> None:
        """Stop (or resume) reading every client connection, open or opened from now on:
        requests are neither answered nor refused, as a hung server's. The TCP connections
        stay up (the kernel still accepts them), so a client learns it only from its
        timeouts and its subscription's missing keep-alives."""
        self.asyncio_transports.set_silent(silent)

    async def load_standard_address_space(self, shelf_file: Path | None = None) -> None:
        nodes = await in_own_thread(standard_nodes, "opcua-sim-address-space")
        for nodeid, node in nodes.items():
            self.aspace[nodeid] = node

    async def stop_clock(self) -> None:
        """Cancel asyncua's clock task (it sleeps 1 s between updates of CurrentTime, and
        ``stop()`` would wait for the sleep to end)."""
        clock, self.time_task = self.time_task, None
        if clock is not None:
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock

    async def close_sessions(self) -> None:
        """Close the sessions still open after ``Server.stop()``.

        A session with subscriptions outlives its connection (so that its client can
        reactivate it, Part 4 6.7), and asyncua's stop() leaves such sessions open, their
        timeout watchdog and subscription loops running after the server is gone.
        """
        for session in list(self._external_sessions.values()):
            await session.close_session(True)


class _Transports(list[asyncio.Transport]):
    """asyncua's list of client transports, which its protocol appends each new connection
    to before any byte of it is read: the one place a connection can be paused from birth."""

    silent = False

    def append(self, transport: asyncio.Transport) -> None:
        super().append(transport)
        if self.silent:
            transport.pause_reading()

    def set_silent(self, silent: bool) -> None:
        if silent == self.silent:
            return
        self.silent = silent
        for transport in self:
            if transport.is_closing():
                continue
            if silent:
                transport.pause_reading()
            else:
                transport.resume_reading()


_template_lock = threading.Lock()
_template: dict[ua.NodeId, NodeData] = {}
"""The standard address space as asyncua builds it; read-only once filled (a cache)."""


def standard_nodes() -> dict[ua.NodeId, NodeData]:
    """A private copy of asyncua's standard address space (builds the template on first use).

    Values are deep-copied (asyncua's server code changes some lists and structures it reads
    in place), reference descriptions copied (renaming a node edits them); the other attributes
    are scalars, ids and names that are replaced, never changed, so they are shared. No
    standard node carries a callback or a method implementation, so there is none to copy.
    """
    with _template_lock:
        if not _template:
            aspace = AddressSpace()
            standard_address_space.fill_address_space(NodeManagementService(aspace))
            _template.update((nodeid, aspace[nodeid]) for nodeid in aspace.keys())  # noqa: SIM118
    return {nodeid: _copy_node(node) for nodeid, node in _template.items()}


def _copy_node(node: NodeData) -> NodeData:
    out = NodeData(node.nodeid)
    for attr, held in node.attributes.items():
        value = copy.deepcopy(held.value) if attr == ua.AttributeIds.Value else held.value
        out.attributes[attr] = AttributeValue(value)
    out.references = [copy.copy(ref) for ref in node.references]
    return out


async def in_own_thread(fn: Callable[[], T], name: str) -> T:
    """``fn()`` in a thread that ends with it (the default executor's threads live on)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    value = await done
    thread.join()  # it has delivered its result and is returning
    return value
