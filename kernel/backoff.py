"""Reconnect backoff, shared by device runners, the MQTT uplink and the trace store."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt)).

    Jitter keeps a line of agents from reconnecting in lockstep after a network blip.
    """
    r = rng or random
    return r.uniform(0.0, min(cap, base * (2 ** min(attempt, 32))))
