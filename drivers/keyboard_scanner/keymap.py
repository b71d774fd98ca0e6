"""Keyboard-wedge key events to scan text: a pure function of the events and the layout.

Why this module exists: a keyboard-wedge scanner is a USB keyboard. For every character of
a code it presses the key that types that character on the keyboard layout it was set to
(its "keyboard country"), with Shift or AltGr held as that layout needs, and it ends the read
with Enter. The agent grabs the device, so no desktop keymap is involved: this module *is* the
keymap, and must use the layout the scanner was set to. A mismatch turns characters into
others (a scanner set to German types ``y`` where a US layout reads ``z``) and nothing can
detect it, which is why a scanner that can do USB-COM or serial should (see
docs/devices/keyboard-scanner.md). No I/O and no evdev here: the tables (key codes and layouts,
in :mod:`drivers.keyboard_scanner.layouts`) and the state machine are tested with tables
(tests/test_keyboard_keymap.py) and run in the driver's reader thread.

Events are ``(code, value, now)``: the Linux key code (``KEY_*`` of linux/input-event-codes.h,
the numbers evdev reports), 1 down, 0 up, 2 autorepeat (which types again, as on a desktop),
and a monotonic time in seconds for the inter-key timeout.

A scan ends with Enter (``KEY_ENTER``, ``KEY_KPENTER``), and with Tab too when ``suffix`` is
``enter_or_tab``. It is rejected, with the reason, when

* a key types no character in the layout (``key 183 (F13) has no character in layout de``):
  unknown keys are never dropped, since a dropped character is a different code;
* it grows past ``max_length`` characters, or no Enter comes within ``inter_key_timeout``
  seconds of the previous key (``no Enter within 0.5 s ...``);
* key events were lost (the kernel's buffer overflowed) or the device went away mid-scan.

After a rejection the rest of the scan, up to its Enter, belongs to the rejected scan, so its
tail is not read as a scan of its own. An Enter with nothing before it is no scan.

GS (0x1D), the separator of GS1 element strings, is on no key, and a wedge mangles it by
default: most scanners drop it or type it as Ctrl+], which a desktop turns into nothing.
``gs_key`` says what this scanner was set to type for it:

* ``ctrl+]`` (the default): Ctrl plus the key that types ``]`` in the layout. Ctrl chords
  follow ASCII's convention (Ctrl plus ``@``..``_`` or a letter gives 0x00..0x1F, Ctrl+? gives
  DEL), so other control characters come through as themselves and the scan rules reject
  them with their position, whatever ``gs_key`` says.
* one character the codes never contain, such as ``~``: every ``~`` typed becomes GS.
* a function key ``F1``..``F24``: that key types GS.

Whatever ``gs_key`` is, Alt held while keypad digits are typed, then released, types the
character of that decimal code (Windows' Alt codes, which many scanners can emulate for every
character: ``Alt+0029`` is GS, and no layout is involved). Codes below 128 are ASCII; above,
a leading 0 means Windows-1252 and none means code page 437, as on Windows.

Other conventions, chosen to match what scanners built for Windows hosts send:

* Ctrl and Alt held together act as AltGr on layouts that have AltGr (de, fr, uk).
* Dead keys (de: circumflex, acute and grave; fr: circumflex and diaeresis, and tilde and grave
  on AltGr, which are dead on Windows though not on Linux) wait for the next key: a space gives
  the accent itself, a letter it combines with gives the combined letter (``^`` ``e`` ->
  ``ê``), anything else gives the accent followed by it. So a scanner that sends ``~`` as
  AltGr+2 then Space (Windows) and one that sends AltGr+2 alone both read ``~`` before a
  digit; a GS substitute is always followed by an AI's digits.
* Keypad keys type their digit or symbol whatever NumLock says (scanners that type digits on
  the keypad assume NumLock on); the layout decides only the keypad's decimal key (de: ``,``).
* Caps Lock is toggled by the scanner's own Caps Lock presses and starts off at every open
  (the host's Caps Lock does not apply to a grabbed device); it changes letters only.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Literal

# The tables, importable from here as they were before they moved (config.py, the tests).
from drivers.keyboard_scanner.layouts import ACUTE as ACUTE
from drivers.keyboard_scanner.layouts import ALT_KEYS as ALT_KEYS
from drivers.keyboard_scanner.layouts import CTRL_KEYS as CTRL_KEYS
from drivers.keyboard_scanner.layouts import DE as DE
from drivers.keyboard_scanner.layouts import DOWN as DOWN
from drivers.keyboard_scanner.layouts import ENTER_KEYS as ENTER_KEYS
from drivers.keyboard_scanner.layouts import FR as FR
from drivers.keyboard_scanner.layouts import FUNCTION_KEYS as FUNCTION_KEYS
from drivers.keyboard_scanner.layouts import IGNORED_KEYS as IGNORED_KEYS
from drivers.keyboard_scanner.layouts import KEY_CODES as KEY_CODES
from drivers.keyboard_scanner.layouts import KEY_NAMES as KEY_NAMES
from drivers.keyboard_scanner.layouts import KEYPAD as KEYPAD
from drivers.keyboard_scanner.layouts import KEYPAD_DIGITS as KEYPAD_DIGITS
from drivers.keyboard_scanner.layouts import LAYOUTS as LAYOUTS
from drivers.keyboard_scanner.layouts import MODIFIER_KEYS as MODIFIER_KEYS
from drivers.keyboard_scanner.layouts import REPEAT as REPEAT
from drivers.keyboard_scanner.layouts import SHIFT_KEYS as SHIFT_KEYS
from drivers.keyboard_scanner.layouts import UK as UK
from drivers.keyboard_scanner.layouts import UP as UP
from drivers.keyboard_scanner.layouts import US as US
from drivers.keyboard_scanner.layouts import K as K
from drivers.keyboard_scanner.layouts import Layout as Layout
from drivers.keyboard_scanner.layouts import LayoutName as LayoutName
from drivers.keyboard_scanner.layouts import Level as Level

GS = "\x1d"
"""ASCII group separator: GS1's FNC1 separator inside a code."""

Suffix = Literal["enter", "enter_or_tab"]


_COMBINING: dict[str, str] = {
    "^": "\u0302",
    ACUTE: "\u0301",
    "`": "\u0300",
    "¨": "\u0308",
    "~": "\u0303",
}


def compose(dead: str, char: str) -> str:
    """A dead key's accent followed by ``char``: the accent alone before a space, the combined
    letter if there is one, else both."""
    if char == " ":
        return dead
    mark = _COMBINING.get(dead)
    if mark is not None:
        combined = unicodedata.normalize("NFC", char + mark)
        if len(combined) == 1:
            return combined
    return dead + char


def control(char: str) -> str | None:
    """ASCII's Ctrl convention: Ctrl+``]`` is GS, Ctrl+``m`` CR, Ctrl+``?`` DEL; None for a
    character that has no control character (a digit, most punctuation)."""
    code = ord(char)
    if 0x40 <= code <= 0x7E:
        return chr(code & 0x1F)
    if char == "?":
        return "\x7f"
    if char == " ":
        return "\x00"
    return None


def alt_code(digits: str) -> tuple[str | None, str | None]:
    """(character, None) for Alt + keypad ``digits``, or (None, why not)."""
    number = int(digits)
    if number > 255:
        return None, f"Alt+numpad code {digits} is not a character (0-255)"
    if number < 128:
        return chr(number), None
    codec = "cp1252" if digits.startswith("0") else "cp437"
    try:
        return bytes([number]).decode(codec), None
    except UnicodeDecodeError:
        return None, f"Alt+numpad code {digits} is not a character in {codec}"


# ---- gs_key --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GsKey:
    """What the scanner types for GS, parsed from ``gs_key``."""

    char: str | None = None
    """A substitute character: every one typed becomes GS."""
    key: int | None = None
    """A key (a function key) that types GS."""

    @property
    def is_chord(self) -> bool:
        return self.char is None and self.key is None


CTRL_CHORD = "ctrl+]"


def parse_gs_key(text: str) -> GsKey:
    """``ctrl+]``, one character that is neither a letter, a digit, a space nor ``]`` (which
    starts AIM identifiers), or ``F1``..``F24``. Raises ValueError saying which forms there
    are."""
    if text.lower() == CTRL_CHORD:
        return GsKey()
    if text.upper() in FUNCTION_KEYS:
        return GsKey(key=FUNCTION_KEYS[text.upper()])
    if text == "]":
        raise ValueError(
            "']' cannot stand for GS: it starts the AIM identifier of every code (]d2 ...); "
            "pick a character the codes never contain, such as ~"
        )
    if len(text) == 1 and text.isprintable() and not text.isalnum() and not text.isspace():
        return GsKey(char=text)
    if len(text) == 1:
        raise ValueError(
            f"{text!r} cannot stand for GS: letters, digits and spaces are data in the codes; "
            "pick a character they never contain, such as ~"
        )
    raise ValueError(
        f"must be ctrl+] (the scanner types GS as Ctrl+]), one character the codes "
        f"never contain (such as ~) or a function key F1 to F24; got {text!r}"
    )


def gs_key_issue(gs_key: str, layout: str) -> str | None:
    """Why ``gs_key`` cannot be typed on ``layout`` (a substitute character the layout has no
    key for), or None. ``gs_key`` must parse."""
    spec = parse_gs_key(gs_key)
    board = LAYOUTS[layout]
    if spec.char is not None and not board.strokes(spec.char):
        return (
            f"{spec.char!r} cannot be typed on layout {layout}: pick a character the layout "
            "has a key for (the scanner types it with that layout)"
        )
    if spec.is_chord and not board.strokes("]"):
        return f"layout {layout} has no ] key for Ctrl+]"  # every layout here has one
    return None


# ---- the state machine ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyScan:
    """One scan: its text, or why it was rejected (text None) and what was typed before."""

    text: str | None
    error: str | None = None
    typed: str = ""
    """Characters typed up to the Enter or the problem (GS substitutes already turned into
    GS), kept in the rejected scan's record."""


@dataclass(slots=True)
class _Scan:
    """The scan being typed."""

    chars: list[str] = field(default_factory=list)
    error: str | None = None
    dead: str | None = None  # a dead key's accent waiting for the next key
    alt_digits: str = ""  # keypad digits typed with Alt held
    last: float | None = None  # time of its last key event; None: no scan under way

    @property
    def started(self) -> bool:
        return self.last is not None


class WedgeDecoder:
    """Key events of one keyboard-wedge scanner in, scans out. Not thread-safe: one owner
    (the driver's reader thread) feeds it."""

    def __init__(
        self,
        layout: str,
        *,
        gs_key: str = CTRL_CHORD,
        suffix: Suffix = "enter",
        max_length: int = 512,
        inter_key_timeout: float = 0.5,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
        self.layout = LAYOUTS[layout]
        self.gs = parse_gs_key(gs_key)
        self.suffix = suffix
        self.max_length = max_length
        self.inter_key_timeout = inter_key_timeout
        self._held: set[int] = set()  # modifier keys down
        self._caps = False
        self._scan = _Scan()

    # -- feeding -----------------------------------------------------------------------------

    def key(self, code: int, value: int, now: float) -> list[KeyScan]:
        """One key event; the scans it finished (an overdue one, then one its Enter ended)."""
        out: list[KeyScan] = []
        overdue = self.expire(now)
        if overdue is not None:
            out.append(overdue)
        scan = self._scan
        if scan.started:
            scan.last = now  # any event of the scanner's, a release too, shows it is typing
        if code in MODIFIER_KEYS:
            self._modifier(code, value)
            return out
        if value == UP or code in IGNORED_KEYS:
            return out
        if code == K["CAPSLOCK"]:
            if value == DOWN:
                self._caps = not self._caps
            return out
        scan.last = now
        if code in ENTER_KEYS or (code == K["TAB"] and self.suffix == "enter_or_tab"):
            done = self._finish()
            if done is not None:
                out.append(done)
            return out
        if scan.error is None:
            self._press(code)
        return out

    def expire(self, now: float) -> KeyScan | None:
        """The scan under way, rejected, if no key came for ``inter_key_timeout`` seconds."""
        scan = self._scan
        if scan.last is None or now - scan.last < self.inter_key_timeout:
            return None
        self._flush_dead()
        why = scan.error or (
            f"no Enter within {self.inter_key_timeout:g} s of the last key: incomplete scan"
        )
        return self._end(why)

    def deadline(self) -> float | None:
        """When :meth:`expire` will reject the scan under way; None when none is."""
        last = self._scan.last
        return None if last is None else last + self.inter_key_timeout

    def lost(self, why: str, now: float) -> None:
        """Key events were lost (the kernel's buffer overflowed): the scan under way, or the
        one whose keys come next (the lost events may have been its start), is rejected with
        ``why``; if no key comes within the timeout, that rejection stands alone, saying a scan
        may be missing. Modifier states are unknown after a loss and taken as released."""
        scan = self._scan
        if scan.error is None:
            scan.error = why
        scan.last = now
        self._held.clear()

    def abort(self, why: str) -> KeyScan | None:
        """The device is gone: the scan under way, if any, rejected with ``why``."""
        self._held.clear()
        if not self._scan.started:
            return None
        self._flush_dead()
        return self._end(self._scan.error or why)

    @property
    def busy(self) -> bool:
        """A scan is under way."""
        return self._scan.started

    # -- inside ------------------------------------------------------------------------------

    def _modifier(self, code: int, value: int) -> None:
        if value == DOWN:
            self._held.add(code)
        elif value == UP:
            self._held.discard(code)
            scan = self._scan
            if code in ALT_KEYS and scan.alt_digits and not self._held & ALT_KEYS:
                digits, scan.alt_digits = scan.alt_digits, ""
                if scan.error is None:
                    char, why = alt_code(digits)
                    if char is None:
                        self._reject(why or "bad Alt code")
                    else:
                        self._type(char)

    def _modes(self) -> tuple[bool, bool, bool, bool]:
        """(shift, ctrl, alt, altgr) as the held modifiers mean them on this layout."""
        held = self._held
        shift = bool(held & SHIFT_KEYS)
        ctrl = bool(held & CTRL_KEYS)
        left_alt = K["LEFTALT"] in held
        right_alt = K["RIGHTALT"] in held
        if not self.layout.altgr:
            return shift, ctrl, left_alt or right_alt, False
        as_altgr = ctrl and left_alt  # Windows: Ctrl+Alt is AltGr
        altgr = right_alt or as_altgr
        return shift, ctrl and not as_altgr, left_alt and not as_altgr, altgr

    def _press(self, code: int) -> None:
        shift, ctrl, alt, altgr = self._modes()
        if alt:
            digit = KEYPAD_DIGITS.get(code)
            if digit is not None and not ctrl:
                self._scan.alt_digits += digit
            else:
                self._reject(f"{_describe(code, shift, ctrl, True, altgr)} has no character")
            return
        if self.gs.key is not None and code == self.gs.key:
            self._flush_dead()
            self._append(GS)
            return
        if code == K["TAB"]:  # not a suffix: a character (the scan rules reject it)
            self._type("\t")
            return
        level: Level = 2 if altgr else 0
        if shift != (self._caps and not altgr and self.layout.is_letter(code)):
            level = 3 if altgr else 1
        char = self.layout.char(code, level)
        if char is None:
            what = _describe(code, shift, False, False, altgr)
            self._reject(f"{what} has no character in layout {self.layout.name}")
            return
        if ctrl:
            ctl = control(char)
            if ctl is None:
                self._reject(f"Ctrl+{char} is not a character (no ASCII control character)")
                return
            self._flush_dead()
            self._append(ctl)
            return
        if (code, level) in self.layout.dead and code not in KEYPAD:
            self._flush_dead()  # a second dead key: the first one's accent stands alone
            self._scan.dead = char
            return
        self._type(char)

    def _type(self, char: str) -> None:
        """A character as typed: composed with a waiting dead key, a GS substitute turned
        into GS."""
        dead, self._scan.dead = self._scan.dead, None
        text = compose(dead, char) if dead is not None else char
        for c in text:
            self._append(GS if c == self.gs.char else c)

    def _flush_dead(self) -> None:
        dead, self._scan.dead = self._scan.dead, None
        if dead is not None:
            self._append(GS if dead == self.gs.char else dead)

    def _append(self, char: str) -> None:
        scan = self._scan
        if scan.error is not None:
            return
        if len(scan.chars) >= self.max_length:
            self._reject(f"scan longer than {self.max_length} characters")
            return
        scan.chars.append(char)

    def _reject(self, why: str) -> None:
        if self._scan.error is None:
            self._scan.error = why

    def _finish(self) -> KeyScan | None:
        scan = self._scan
        self._flush_dead()
        if scan.alt_digits:
            self._reject(f"Enter while an Alt+numpad code ({scan.alt_digits}) was being typed")
        if not scan.chars and scan.error is None:
            self._scan = _Scan()
            return None  # Enter alone
        return self._end(scan.error)

    def _end(self, error: str | None) -> KeyScan:
        typed = "".join(self._scan.chars)
        self._scan = _Scan()
        if error is not None:
            return KeyScan(None, error, typed)
        return KeyScan(typed, None, typed)


def key_name(code: int) -> str:
    """``key 183 (F13)``; ``key 240`` for a key this module has no name for."""
    name = KEY_NAMES.get(code)
    return f"key {code} ({name})" if name else f"key {code}"


def _describe(code: int, shift: bool, ctrl: bool, alt: bool, altgr: bool) -> str:
    mods = [m for m, on in (("Ctrl", ctrl), ("Shift", shift), ("Alt", alt), ("AltGr", altgr)) if on]
    return "+".join([*mods, key_name(code)])
