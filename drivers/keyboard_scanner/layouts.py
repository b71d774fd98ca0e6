"""The keyboard's data, for :mod:`drivers.keyboard_scanner.keymap`: Linux key codes, and what
each key types on each layout a scanner may be set to (us, uk, de, fr). Tables only: how key
events become text (modifiers, dead keys, Caps Lock, GS) is the keymap's, and its doc says which
conventions it follows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

LayoutName = Literal["us", "uk", "de", "fr"]
"""The layouts of :data:`LAYOUTS` (tests/test_keyboard_keymap.py checks they agree)."""

# ---- key codes (linux/input-event-codes.h; a stable kernel ABI) ----------------------------

KEY_CODES: dict[str, int] = {
    "ESC": 1,
    **{str(d): 2 + (d - 1) % 10 for d in range(10)},  # 1..9 -> 2..10, 0 -> 11
    "MINUS": 12,
    "EQUAL": 13,
    "BACKSPACE": 14,
    "TAB": 15,
    **{c: 16 + i for i, c in enumerate("QWERTYUIOP")},
    "LEFTBRACE": 26,
    "RIGHTBRACE": 27,
    "ENTER": 28,
    "LEFTCTRL": 29,
    **{c: 30 + i for i, c in enumerate("ASDFGHJKL")},
    "SEMICOLON": 39,
    "APOSTROPHE": 40,
    "GRAVE": 41,
    "LEFTSHIFT": 42,
    "BACKSLASH": 43,
    **{c: 44 + i for i, c in enumerate("ZXCVBNM")},
    "COMMA": 51,
    "DOT": 52,
    "SLASH": 53,
    "RIGHTSHIFT": 54,
    "KPASTERISK": 55,
    "LEFTALT": 56,
    "SPACE": 57,
    "CAPSLOCK": 58,
    **{f"F{n}": 58 + n for n in range(1, 11)},  # F1..F10 -> 59..68
    "NUMLOCK": 69,
    "SCROLLLOCK": 70,
    "KP7": 71,
    "KP8": 72,
    "KP9": 73,
    "KPMINUS": 74,
    "KP4": 75,
    "KP5": 76,
    "KP6": 77,
    "KPPLUS": 78,
    "KP1": 79,
    "KP2": 80,
    "KP3": 81,
    "KP0": 82,
    "KPDOT": 83,
    "102ND": 86,
    "F11": 87,
    "F12": 88,
    "KPENTER": 96,
    "RIGHTCTRL": 97,
    "KPSLASH": 98,
    "RIGHTALT": 100,
    "HOME": 102,
    "UP": 103,
    "PAGEUP": 104,
    "LEFT": 105,
    "RIGHT": 106,
    "END": 107,
    "DOWN": 108,
    "PAGEDOWN": 109,
    "INSERT": 110,
    "DELETE": 111,
    "KPEQUAL": 117,
    "KPCOMMA": 121,
    "LEFTMETA": 125,
    "RIGHTMETA": 126,
    **{f"F{n}": 183 + n - 13 for n in range(13, 25)},  # F13..F24 -> 183..194
}
"""Linux key code by name (without ``KEY_``): the keys a scanner may press, and the ones a
person would, so that rejection messages can name them."""

KEY_NAMES: dict[int, str] = {code: name for name, code in KEY_CODES.items()}
K = KEY_CODES

SHIFT_KEYS = frozenset({K["LEFTSHIFT"], K["RIGHTSHIFT"]})
CTRL_KEYS = frozenset({K["LEFTCTRL"], K["RIGHTCTRL"]})
ALT_KEYS = frozenset({K["LEFTALT"], K["RIGHTALT"]})
MODIFIER_KEYS = SHIFT_KEYS | CTRL_KEYS | ALT_KEYS
ENTER_KEYS = frozenset({K["ENTER"], K["KPENTER"]})
IGNORED_KEYS = frozenset({K["NUMLOCK"], K["SCROLLLOCK"]})
"""Lock keys that change nothing here (the keypad types digits whatever NumLock says)."""
FUNCTION_KEYS: dict[str, int] = {f"F{n}": K[f"F{n}"] for n in range(1, 25)}

KEYPAD: dict[int, str] = {
    **{K[f"KP{d}"]: str(d) for d in range(10)},
    K["KPASTERISK"]: "*",
    K["KPMINUS"]: "-",
    K["KPPLUS"]: "+",
    K["KPSLASH"]: "/",
    K["KPEQUAL"]: "=",
    K["KPCOMMA"]: ",",
}
"""Keypad keys and what they type (the decimal key is the layout's)."""
KEYPAD_DIGITS: dict[int, str] = {K[f"KP{d}"]: str(d) for d in range(10)}

DOWN, UP, REPEAT = 1, 0, 2
"""Key event values."""
ACUTE = "\u00b4"
"""The acute accent, a dead key of the German layout."""

# ---- layouts -------------------------------------------------------------------------------

Level = Literal[0, 1, 2, 3]
"""0 plain, 1 Shift, 2 AltGr, 3 Shift+AltGr."""


@dataclass(frozen=True, slots=True)
class Layout:
    """What each key types at each level, for one keyboard layout."""

    name: str
    keys: Mapping[int, tuple[str | None, str | None, str | None, str | None]]
    """Key code -> characters at levels 0..3 (None: nothing at that level)."""
    dead: frozenset[tuple[int, int]] = frozenset()
    """(key code, level) of dead keys: they wait for the next key (see the keymap's doc)."""
    altgr: bool = True
    """Whether right Alt is AltGr (else it is Alt, as on a US layout)."""
    keypad_decimal: str = "."

    def char(self, code: int, level: int) -> str | None:
        if code in KEYPAD:
            return KEYPAD[code]
        if code == K["KPDOT"]:
            return self.keypad_decimal
        chars = self.keys.get(code)
        return None if chars is None else chars[level]

    def strokes(self, char: str) -> list[tuple[int, int]]:
        """Every (key code, level) that types ``char``, dead keys included."""
        return [
            (code, level)
            for code, chars in self.keys.items()
            for level, c in enumerate(chars)
            if c == char
        ]

    def is_letter(self, code: int) -> bool:
        """A key whose Shift level is the capital of its plain level: Caps Lock changes it."""
        chars = self.keys.get(code)
        if chars is None or chars[0] is None or chars[1] is None:
            return False
        return chars[0].isalpha() and chars[0] != chars[1] and chars[0].upper() == chars[1]


def _layout(
    name: str,
    rows: Sequence[tuple[str, str, str]],
    *,
    altgr: str = "",
    dead: Iterable[tuple[str, int]] = (),
    has_altgr: bool = True,
    keypad_decimal: str = ".",
) -> Layout:
    """Build a layout from rows of consecutive keys: (name of the row's first key, its plain
    characters, its shifted characters), and the AltGr level as space-separated key name +
    character (``"Q@ E€"``: AltGr+Q types @). No layout here needs Shift+AltGr for what
    scanners type, so that level is left empty (a scan using it is rejected, with the key)."""
    keys: dict[int, list[str | None]] = {}
    for first, plain, shifted in rows:
        if len(plain) != len(shifted):
            raise ValueError(f"{name}: row at {first}: {plain!r} and {shifted!r} differ in length")
        start = K[first]
        for i, (a, b) in enumerate(zip(plain, shifted, strict=True)):
            keys[start + i] = [a, b, None, None]
    keys[K["SPACE"]] = [" ", " ", " ", " "]
    for entry in altgr.split():
        keys[K[entry[:-1]]][2] = entry[-1]
    return Layout(
        name,
        {code: (c[0], c[1], c[2], c[3]) for code, c in keys.items()},
        frozenset((K[key], level) for key, level in dead),
        has_altgr,
        keypad_decimal,
    )


US = _layout(
    "us",
    [
        ("1", "1234567890-=", "!@#$%^&*()_+"),
        ("Q", "qwertyuiop[]", "QWERTYUIOP{}"),
        ("A", "asdfghjkl;'`", 'ASDFGHJKL:"~'),
        ("BACKSLASH", "\\zxcvbnm,./", "|ZXCVBNM<>?"),
        ("102ND", "<", ">"),
    ],
    has_altgr=False,  # right Alt is Alt
)
UK = _layout(
    "uk",
    [
        ("1", "1234567890-=", '!"£$%^&*()_+'),
        ("Q", "qwertyuiop[]", "QWERTYUIOP{}"),
        ("A", "asdfghjkl;'`", "ASDFGHJKL:@¬"),
        ("BACKSLASH", "#zxcvbnm,./", "~ZXCVBNM<>?"),
        ("102ND", "\\", "|"),
    ],
    altgr="4€ 7{ 8[ 9] 0} MINUS\\ Q@ GRAVE| 102ND|",
)
DE = _layout(
    "de",
    [
        ("1", "1234567890ß" + ACUTE, '!"§$%&/()=?`'),
        ("Q", "qwertzuiopü+", "QWERTZUIOPÜ*"),
        ("A", "asdfghjklöä^", "ASDFGHJKLÖÄ°"),
        ("BACKSLASH", "#yxcvbnm,.-", "'YXCVBNM;:_"),
        ("102ND", "<", ">"),
    ],
    altgr="2² 3³ 7{ 8[ 9] 0} MINUS\\ Q@ E€ RIGHTBRACE~ Mµ 102ND|",
    dead=[("EQUAL", 0), ("EQUAL", 1), ("GRAVE", 0)],
    keypad_decimal=",",
)
FR = _layout(
    "fr",
    [
        ("1", "&é\"'(-è_çà)=", "1234567890°+"),
        ("Q", "azertyuiop^$", "AZERTYUIOP¨£"),
        ("A", "qsdfghjklmù²", "QSDFGHJKLM%~"),
        ("BACKSLASH", "*wxcvbn,;:!", "µWXCVBN?./§"),
        ("102ND", "<", ">"),
    ],
    altgr="2~ 3# 4{ 5[ 6| 7` 8\\ 9^ 0@ MINUS] EQUAL} E€ RIGHTBRACE¤",
    dead=[("LEFTBRACE", 0), ("LEFTBRACE", 1), ("2", 2), ("7", 2)],
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (US, UK, DE, FR)}
"""Every layout by the name ``layout:`` takes (the config's Literal lists the same names)."""
