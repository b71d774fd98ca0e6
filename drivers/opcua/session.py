"""The OPC UA client of one device, and how a lost connection is resumed (OPC UA Part 4 6.7).

On a lost connection asyncua's supervisor (``auto_reconnect``) opens a new secure channel and
reactivates the existing session on it, then transfers the subscription and republishes the
notification messages the agent had not received: nothing that changed meanwhile is missed.
This module watches that happen for the driver:

- the loss is reported at once (the device is down, and an outage record says so);
- a session resumed with its subscription transferred brings the device back up, the missed
  notifications arriving as ordinary changes;
- a session the server no longer has (it restarted) makes asyncua create a new one and
  recreate the monitored items with the NodeIds of the old server run, dropping those that
  fail: that is not trusted, and the driver rebuilds everything from the namespace URIs.

asyncua's own server answers Republish of a message it does not have with an empty message
instead of Bad_MessageNotAvailable (Part 4 5.13.6), and asyncua's client then asks for the
next sequence number for ever: an empty answer ends the republishing here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.uaerrors import BadMessageNotAvailable

from drivers.opcua.config import OpcUaDevice

MAX_REPUBLISH = 10_000
"""Messages republished at most after one loss; a server that never says 'no more' stops."""


def make_client(device: OpcUaDevice, on_lost: Callable[[Exception], Awaitable[None]]) -> Client:
    """The device's client: its timeouts, resumption on, asyncua's stale-subscription
    watchdog off (it would recreate items with NodeIds of an older server run; the driver
    notices a silent subscription itself and rebuilds from the namespace URIs)."""
    client = Client(
        device.endpoint,
        timeout=device.timeout,
        watchdog_intervall=_watchdog(device),
        auto_reconnect=True,
        reconnect_max_delay=device.backoff_max,
        reconnect_request_timeout=device.timeout,
    )
    client.session_timeout = int(device.session_timeout * 1000)
    client.application_uri = device.application_uri
    client.description = f"edge-agent {device.name}"
    client._stale_check_margin = math.inf
    client.connection_lost_callback = on_lost
    return client


def bound_republish(client: Client) -> None:
    """End republishing at an empty message (see the module doc), on this client only."""
    session = client.uaclient.session
    original = session.republish
    count = [0]

    async def republish(subscription_id: int, sequence_number: int) -> Any:
        count[0] += 1
        message = await original(subscription_id, sequence_number)
        if not message.NotificationData or count[0] > MAX_REPUBLISH:
            raise BadMessageNotAvailable()
        return message

    session.republish = republish


def connected(client: Client) -> bool:
    """Whether the client holds an active session now (not reconnecting)."""
    return bool(client.uaclient.state is UaClientState.CONNECTED)


def _watchdog(device: OpcUaDevice) -> float:
    """How often asyncua probes a connection that looks up: within a keep-alive window."""
    return max(0.2, min(1.0, device.publishing_interval * device.keepalive_count))


class Resumption:
    """A loss being resumed, and since when."""

    def __init__(self) -> None:
        self.since = asyncio.get_running_loop().time()
