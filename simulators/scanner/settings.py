"""How a scanner is configured: the framing around each code, the faults it makes, the
agent's answers it knows, its material labels and schedule, and a fixed-mount reader's trigger
protocol. :func:`_check_config` finds every configuration error before anything runs. (What the
code itself holds, :class:`~simulators.scanner.codes.Symbol`, is in :mod:`.codes`.)

Faults (:class:`Fault`), by rate (``Faults.rates``, one seeded draw per part scan, so a run is
repeatable) or on demand (:meth:`ScannerBase.inject`, taking precedence over the rates):
  * ``no_read``: the no-read text (``NOREAD``) instead of the code;
  * ``bad_check_digit``: the code with the GTIN's check digit off by one;
  * ``garbage``: random bytes (at least one C0 control, never GS nor a framing byte, so it is
    still exactly one frame) in the framing;
  * ``split``: the good frame written in ``split_into`` pieces, ``split_pause`` apart;
  * ``merged``: the good frame is held back and written in one write together with the next
    frame (whatever that is), as a buffering serial server would; until then its ``sent_at``
    is None;
  * ``overlong``: the code padded with ``X`` to ``max_length + 1`` bytes before the framing.
``split`` and ``merged`` frames carry a valid code (``valid`` True); the others do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from simulators.scanner.codes import (
    _GS1_MAX,
    Symbol,
    _gs1_check,
    _strip_aim,
    gs1_value,
    gtin14,
    part_code,
)
from simulators.station import StationModel

HONEYWELL_GOOD = b"\x1b7"
"""Honeywell host ACK: good read (ESC 7)."""
HONEYWELL_BAD = b"\x1b8"
"""Honeywell host ACK: bad read (ESC 8)."""


class Fault(StrEnum):
    """What can go wrong with one part scan (see the module doc)."""

    NO_READ = "no_read"
    BAD_CHECK_DIGIT = "bad_check_digit"
    GARBAGE = "garbage"
    SPLIT = "split"
    MERGED = "merged"
    OVERLONG = "overlong"


_VALID_DATA = frozenset({Fault.SPLIT, Fault.MERGED})
"""Faults of the wire only: the code they carry is still the part's valid code."""


@dataclass(frozen=True)
class Framing:
    """What surrounds each code on the wire."""

    prefix: bytes = b""
    suffix: bytes = b"\r"

    def frame(self, payload: bytes) -> bytes:
        return self.prefix + payload + self.suffix

    @property
    def reserved(self) -> frozenset[int]:
        """Bytes a payload must not contain (it would end the frame early)."""
        return frozenset(self.prefix + self.suffix)


CR = Framing(suffix=b"\r")
LF = Framing(suffix=b"\n")
CRLF = Framing(suffix=b"\r\n")
STX_ETX = Framing(prefix=b"\x02", suffix=b"\x03")


@dataclass(frozen=True)
class Faults:
    """Fault rates and shapes. Rates are probabilities per part scan; their sum is at most 1."""

    rates: Mapping[Fault, float] = field(default_factory=dict)
    seed: int = 0
    split_into: int = 3
    split_pause: float = 0.02
    garbage_length: int = 12
    max_length: int = 256
    """The longest payload the agent is expected to accept; ``overlong`` exceeds it by 1."""


@dataclass(frozen=True)
class HostAck:
    """The agent's answers to scans, and host ACK mode."""

    good: bytes = HONEYWELL_GOOD
    bad: bytes = HONEYWELL_BAD
    wait: bool = False
    """Host ACK mode: hold further scans until the last write's scans are answered."""
    timeout: float = 1.0
    """How long host ACK mode waits before going on without an answer."""


@dataclass(frozen=True)
class MaterialScan:
    """A component or material label scanned at phase ``phase`` of cycle ``cycle``."""

    cycle: int
    code: str
    """Exactly what the scanner decodes, e.g. ``lot_label("LOT4711")`` or ``"LOT4711"``."""
    phase: float = 0.5
    valid: bool = True


@dataclass(frozen=True)
class ScannerConfig:
    symbol: Symbol = field(default_factory=Symbol)
    framing: Framing = CR
    no_read_text: str = "NOREAD"
    faults: Faults = field(default_factory=Faults)
    ack: HostAck = field(default_factory=HostAck)
    materials: Sequence[MaterialScan] = ()
    """(Handheld only) material labels scanned at fixed moments of the scenario."""
    scan_phase: float = 0.0
    """(Handheld only) phase of its cycle at which a part is scanned; 0: as it arrives."""
    auto: bool = True
    """(Handheld only) scan every part by itself; False: only on demand."""
    first_cycle: int | None = None
    """(Handheld only) the first part scanned; None: the first whose scan moment is not
    before ``start()``."""
    max_scans: int | None = None
    """(Handheld only) stop scanning parts by schedule after this many."""


@dataclass(frozen=True)
class TriggerConfig:
    """A fixed-mount reader's trigger protocol (Keyence SR defaults)."""

    on: bytes = b"LON\r"
    off: bytes = b"LOFF\r"
    decode_time: float = 0.05
    """From the trigger to the answer of a readable code."""
    read_timeout: float = 1.0
    """From the trigger to the no-read answer when nothing is decodable."""


def _check_config(model: StationModel, config: ScannerConfig, extra: Sequence[bytes]) -> None:
    """Every configuration error, found before anything runs."""
    problems: list[str] = []
    if model.handshake:
        problems.append(
            "a handshake station's cycles follow the agent, not the clock: a scanner cannot "
            "know when its parts arrive"
        )
    if not config.framing.suffix:
        problems.append("framing.suffix must not be empty (it ends each frame)")
    reserved = config.framing.reserved
    symbol = config.symbol
    try:
        gtin14(symbol.gtin)
    except ValueError as exc:
        problems.append(f"symbol.gtin: {exc}")
    else:
        cycle = config.first_cycle or 0
        too_long = [
            f"the station's {name} {value!r} is {gs1_value(value)!r} in GS1, longer than "
            f"{_GS1_MAX} characters"
            for name, value in (("serial", model.serial(cycle)), ("lot", model.lot(cycle)))
            if len(gs1_value(value)) > _GS1_MAX
        ]
        problems += too_long
        if not too_long:
            code = part_code(model, cycle, symbol)
            try:
                _gs1_check(f"part code {code!r}", _strip_aim(code, symbol.aim))
            except ValueError as exc:
                problems.append(str(exc))
            if reserved & set(code.encode("latin-1")):
                problems.append(f"part code {code!r} contains a framing byte")
    try:
        no_read = config.no_read_text.encode("ascii")
    except UnicodeEncodeError:
        problems.append(f"no_read_text {config.no_read_text!r} is not ASCII")
    else:
        if not no_read or reserved & set(no_read):
            problems.append(f"no_read_text {config.no_read_text!r} is empty or holds framing")
    faults = config.faults
    for fault, rate in faults.rates.items():
        if not 0.0 <= rate <= 1.0:
            problems.append(f"faults.rates[{fault}] = {rate} is not a probability")
    if sum(faults.rates.values()) > 1.0:
        problems.append(f"faults.rates add up to {sum(faults.rates.values())}, more than 1")
    if faults.split_into < 2:
        problems.append("faults.split_into must be at least 2")
    if faults.split_pause < 0 or faults.garbage_length < 1 or faults.max_length < 1:
        problems.append("faults.split_pause, garbage_length and max_length must be positive")
    if not 0.0 <= config.scan_phase < 1.0:
        problems.append(f"scan_phase {config.scan_phase} is not in [0, 1)")
    for m in config.materials:
        if not 0.0 <= m.phase < 1.0 or m.cycle < 0:
            problems.append(f"material scan {m}: cycle must be >= 0 and phase in [0, 1)")
        try:
            if reserved & set(m.code.encode("latin-1")):
                problems.append(f"material scan {m.code!r} contains a framing byte")
        except UnicodeEncodeError:
            problems.append(f"material scan {m.code!r} is not Latin-1 (one byte a character)")
    if config.ack.timeout <= 0:
        problems.append("ack.timeout must be positive")
    tokens = [config.ack.good, config.ack.bad, *extra]
    for i, a in enumerate(tokens):
        if not a:
            problems.append("answer and trigger byte strings must not be empty")
        for b in tokens[i + 1 :]:
            if a and b and (a.startswith(b) or b.startswith(a)):
                problems.append(f"{a!r} and {b!r} cannot be told apart")
    if problems:
        raise ValueError("scanner configuration invalid: " + "; ".join(problems))
