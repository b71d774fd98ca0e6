"""A point's script as a pure function of time: seconds since the scenario started -> value.

Pure, so a test computes what a point showed at any instant without asking the simulator,
and noise is the same in every run: draw k of a point is seeded by (seed, device, point, k),
not by the order in which values happen to be asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kernel.model import Value
from simulators.devicemap.scenario import PointScript

Signal = Callable[[float], Value]


def signal(script: PointScript, device: str, point: str, seed: int) -> Signal:
    """The function of time ``script`` describes for ``device.point``."""
    if script.constant is not None:
        value = script.constant
        return lambda t: value
    if script.ramp is not None:
        r = script.ramp
        return lambda t: ramp(t, r.start, r.end, r.period, r.repeat)
    if script.noise is not None:
        n = script.noise
        key = f"{n.seed if n.seed is not None else seed}/{device}/{point}"
        return lambda t: noise(t, n.mean, n.stddev, n.every, key)
    assert script.sequence is not None
    s = script.sequence
    values: list[Value] = list(s.values)
    return lambda t: step(t, values, s.every, s.repeat)


def ramp(t: float, start: float, end: float, period: float, repeat: bool) -> float:
    """``start`` -> ``end`` over ``period`` seconds; again from ``start``, or held at
    ``end``."""
    if not repeat and t >= period:
        return end
    phase = (t % period) / period if t >= 0 else 0.0
    return start + (end - start) * phase


def noise(t: float, mean: float, stddev: float, every: float, key: str) -> float:
    """Draw ``t // every`` of a normal distribution, seeded by ``key`` and the draw number."""
    k = int(max(0.0, t) // every)
    return random.Random(f"{key}/{k}").gauss(mean, stddev)


def step(t: float, values: list[Value], every: float, repeat: bool) -> Value:
    """``values[k]`` for the k-th slot of ``every`` seconds; the last one held unless
    ``repeat``."""
    k = int(max(0.0, t) // every)
    return values[k % len(values)] if repeat else values[min(k, len(values) - 1)]
