"""The keyboard-wedge keymap as tables: key strokes in, scan text (or the reason it was
rejected) out, per layout, with Shift, AltGr, Caps Lock, dead keys, Ctrl chords, Alt codes,
GS substitutes, unknown keys, the length limit and the inter-key timeout. Pure: no device."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from drivers.keyboard_scanner.config import KeyboardScannerDevice
from drivers.keyboard_scanner.keymap import (
    GS,
    KEY_CODES,
    LAYOUTS,
    GsKey,
    KeyScan,
    WedgeDecoder,
    alt_code,
    compose,
    control,
    parse_gs_key,
)
from tests.keyboard_helpers import GS1_CHARSET, Event, K, strokes, typing


def decode(
    events: Iterable[Event], layout: str = "us", step: float = 0.001, **options: object
) -> list[KeyScan]:
    decoder = WedgeDecoder(layout, **options)  # type: ignore[arg-type]
    out: list[KeyScan] = []
    for i, (code, value) in enumerate(events):
        out += decoder.key(code, value, i * step)
    return out


def texts(scans: list[KeyScan]) -> list[str | None]:
    return [s.text for s in scans]


# ---- layouts, by hand from each layout's keyboard (xkb's symbols files) ---------------------


@pytest.mark.parametrize(
    ("layout", "keys", "text"),
    [
        ("us", "SHIFT+A B C 1 2 SHIFT+2 SHIFT+3 MINUS SHIFT+MINUS SLASH", "Abc12@#-_/"),
        ("us", "LEFTBRACE RIGHTBRACE SHIFT+LEFTBRACE SHIFT+APOSTROPHE GRAVE SHIFT+GRAVE", '[]{"`~'),
        (
            "uk",
            "SHIFT+2 SHIFT+3 SHIFT+APOSTROPHE BACKSLASH SHIFT+BACKSLASH 102ND ALTGR+4",
            '"£@#~\\€',
        ),
        ("uk", "ALTGR+Q SHIFT+GRAVE GRAVE", "@¬`"),
        ("de", "Z Y SHIFT+7 SHIFT+0 MINUS SHIFT+MINUS SLASH SHIFT+SLASH", "yz/=ß?-_"),
        ("de", "ALTGR+Q ALTGR+8 ALTGR+9 ALTGR+7 ALTGR+0 ALTGR+MINUS ALTGR+RIGHTBRACE", "@[]{}\\~"),
        (
            "de",
            "102ND SHIFT+102ND ALTGR+102ND SEMICOLON SHIFT+APOSTROPHE BACKSLASH SHIFT+3",
            "<>|öÄ#§",
        ),
        ("de", "SHIFT+GRAVE ALTGR+E SHIFT+COMMA SHIFT+DOT RIGHTBRACE SHIFT+RIGHTBRACE", "°€;:+*"),
        ("fr", "Q A W Z SHIFT+1 1 ALTGR+0 ALTGR+3 SEMICOLON SHIFT+M", "aqzw1&@#m?"),
        ("fr", "2 3 4 5 6 7 8 9 0 MINUS EQUAL", "é\"'(-è_çà)="),
        (
            "fr",
            "SHIFT+2 SHIFT+0 ALTGR+5 ALTGR+MINUS ALTGR+4 ALTGR+EQUAL ALTGR+8 ALTGR+6",
            "20[]{}\\|",
        ),
        ("fr", "M COMMA DOT SLASH SHIFT+DOT SHIFT+SLASH BACKSLASH SHIFT+APOSTROPHE", ",;:!/§*%"),
    ],
)
def test_each_layout_types_its_characters(layout: str, keys: str, text: str) -> None:
    assert texts(decode(strokes(keys + " ENTER"), layout)) == [text]


def test_a_layout_mismatch_turns_characters_into_others() -> None:
    """Why the layout must be the scanner's: a scanner set to us, read as de, reads another
    code, and nothing can tell."""
    sent = typing("ZY-1", "us")
    assert texts(decode(sent, "us")) == ["ZY-1"]
    assert texts(decode(sent, "de")) == ["YZß1"]
    assert texts(decode(typing("a1", "fr"), "us")) == ["q!"]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_types_all_of_gs1s_characters(layout: str) -> None:
    code = GS1_CHARSET
    assert texts(decode(typing(code, layout), layout)) == [code]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_character_of_a_layout_comes_back(layout: str) -> None:
    board = LAYOUTS[layout]
    chars = sorted({c for keys in board.keys.values() for c in keys if c and c != " "})
    for char in chars:
        assert texts(decode(typing(char, layout), layout)) == [char], (layout, char)


def test_the_config_offers_exactly_the_layouts_there_are() -> None:
    field = KeyboardScannerDevice.model_fields["layout"]
    assert set(field.annotation.__args__) == set(LAYOUTS)  # type: ignore[union-attr]


# ---- Shift, Caps Lock, AltGr -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "keys", "text"),
    [
        ("us", "CAPSLOCK A B 1 SHIFT+C CAPSLOCK D", "AB1cd"),
        ("us", "CAPSLOCK CAPSLOCK A", "a"),
        ("de", "CAPSLOCK LEFTBRACE SEMICOLON Z MINUS", "ÜÖYß"),  # ß has no capital key
        ("fr", "CAPSLOCK 1 2 Q", "&éA"),  # caps changes letters only, not the digit row
        ("de", "CAPSLOCK ALTGR+Q", "@"),
    ],
)
def test_caps_lock_changes_letters_only(layout: str, keys: str, text: str) -> None:
    assert texts(decode(strokes(keys + " ENTER"), layout)) == [text]


def test_caps_lock_presses_toggle_on_key_down_only() -> None:
    events = [(K["CAPSLOCK"], 1), (K["CAPSLOCK"], 2), (K["CAPSLOCK"], 0), *strokes("A ENTER")]
    assert texts(decode(events)) == ["A"]


def test_both_shift_keys_and_a_shift_held_across_keys() -> None:
    events = [(K["RIGHTSHIFT"], 1), *strokes("A B"), (K["RIGHTSHIFT"], 0), *strokes("C ENTER")]
    assert texts(decode(events)) == ["ABc"]


def test_ctrl_and_alt_together_are_altgr_on_layouts_with_altgr() -> None:
    """Scanners built for Windows hosts send AltGr as Ctrl+Alt."""
    assert texts(decode(strokes("CTRL+ALT+Q CTRL+ALT+8 ENTER"), "de")) == ["@["]
    assert texts(decode(strokes("CTRL+ALT+0 ENTER"), "fr")) == ["@"]


def test_right_alt_is_alt_on_the_us_layout() -> None:
    (scan,) = decode(strokes("A ALTGR+Q B ENTER"), "us")
    assert scan.text is None
    assert scan.error == "Alt+key 16 (Q) has no character"
    assert scan.typed == "a"


def test_a_level_a_key_does_not_have_is_a_rejected_scan() -> None:
    (scan,) = decode(strokes("ALTGR+A ENTER"), "de")
    assert scan.error == "AltGr+key 30 (A) has no character in layout de"
    (scan,) = decode(strokes("SHIFT+ALTGR+Q ENTER"), "de")
    assert scan.error == "Shift+AltGr+key 16 (Q) has no character in layout de"


# ---- dead keys, Ctrl chords, Alt codes, the keypad -------------------------------------------


@pytest.mark.parametrize(
    ("layout", "keys", "text"),
    [
        ("de", "GRAVE SPACE", "^"),
        ("de", "GRAVE E", "ê"),
        ("de", "GRAVE 1", "^1"),
        ("de", "EQUAL SPACE SHIFT+EQUAL SPACE", "\u00b4`"),
        ("de", "EQUAL E SHIFT+EQUAL A", "éà"),
        ("de", "GRAVE GRAVE SPACE", "^^"),
        ("de", "A GRAVE", "a^"),  # Enter ends the wait: the accent stands
        ("fr", "LEFTBRACE E SHIFT+LEFTBRACE I LEFTBRACE SPACE", "êï^"),
        ("fr", "ALTGR+2 SPACE ALTGR+2 SHIFT+1 ALTGR+2 N", "~~1ñ"),  # Windows' dead ~, Linux's plain
        ("fr", "ALTGR+7 SPACE", "`"),
    ],
)
def test_dead_keys(layout: str, keys: str, text: str) -> None:
    assert texts(decode(strokes(keys + " ENTER"), layout)) == [text]


def test_compose_and_control_tables() -> None:
    assert [compose("^", c) for c in " ea1"] == ["^", "ê", "â", "^1"]
    assert compose("¨", "u") == "ü"
    assert "".join(control(c) or "" for c in "]m@[_?d D") == "\x1d\r\x00\x1b\x1f\x7f\x04\x00\x04"
    assert control("5") is None


@pytest.mark.parametrize(
    ("keys", "text", "error"),
    [
        ("CTRL+RIGHTBRACE", GS, None),
        ("CTRL+D", "\x04", None),  # a control character comes through: the scan rules reject it
        ("CTRL+SHIFT+6", "\x1e", None),  # Ctrl+^ is RS
        ("CTRL+5", None, "Ctrl+5 is not a character (no ASCII control character)"),
    ],
)
def test_ctrl_chords_follow_ascii(keys: str, text: str | None, error: str | None) -> None:
    (scan,) = decode(strokes(f"1 {keys} 2 ENTER"))
    assert scan.error == error
    assert scan.text == (None if text is None else f"1{text}2")


def alt_digits(digits: str) -> list[Event]:
    alt = K["LEFTALT"]
    return [(alt, 1), *strokes(" ".join(f"KP{d}" for d in digits)), (alt, 0)]


@pytest.mark.parametrize(
    ("digits", "char", "error"),
    [
        ("0029", GS, None),
        ("29", GS, None),
        ("065", "A", None),
        ("0233", "é", None),  # leading 0: Windows-1252
        ("130", "é", None),  # none: code page 437
        ("300", None, "Alt+numpad code 300 is not a character (0-255)"),
        ("0129", None, "Alt+numpad code 0129 is not a character in cp1252"),
    ],
)
def test_alt_codes(digits: str, char: str | None, error: str | None) -> None:
    assert alt_code(digits) == (char, error)
    (scan,) = decode([*strokes("1"), *alt_digits(digits), *strokes("2 ENTER")], "de")
    assert scan.error == error
    assert scan.text == (None if char is None else f"1{char}2")


def test_alt_with_another_key_is_rejected() -> None:
    (scan,) = decode(strokes("A ALT+F ENTER"), "de")
    assert scan.error == "Alt+key 33 (F) has no character"


def test_the_keypad_types_digits_and_its_decimal_key_is_the_layouts() -> None:
    keys = "NUMLOCK KP1 KP2 KPDOT KP3 KPMINUS KPPLUS KPASTERISK KPSLASH KPENTER"
    assert texts(decode(strokes(keys), "us")) == ["12.3-+*/"]
    assert texts(decode(strokes(keys), "de")) == ["12,3-+*/"]


def test_autorepeat_types_again_like_a_desktop() -> None:
    events = [(K["A"], 1), (K["A"], 2), (K["A"], 2), (K["A"], 0), *strokes("ENTER")]
    assert texts(decode(events)) == ["aaa"]


# ---- GS ------------------------------------------------------------------------------------

GS1_SCAN = "]d20109501101530003" + "21ABC123" + GS + "10LOT7" + GS + "17261231"
"""A GS1 DataMatrix read: AIM identifier, GTIN, serial, GS, lot, GS, expiry."""


@pytest.mark.parametrize(
    ("layout", "gs_key"),
    [
        ("us", "ctrl+]"),
        ("us", "~"),
        ("us", "F8"),
        ("uk", "ctrl+]"),
        ("uk", "¬"),
        ("de", "~"),  # AltGr++
        ("de", "^"),  # a dead key: it waits for the AI's digit, which does not combine
        ("de", "F13"),
        ("fr", "~"),  # AltGr+2, dead on Windows
        ("fr", "$"),
        ("fr", "Ctrl+]"),  # AltGr+) with Ctrl
    ],
)
def test_a_gs1_scan_with_its_gs_comes_back_on_every_layout(layout: str, gs_key: str) -> None:
    sent = typing(GS1_SCAN, layout, gs_key)
    assert texts(decode(sent, layout, gs_key=gs_key)) == [GS1_SCAN]


def test_without_the_setting_a_substitute_is_just_a_character() -> None:
    """What the wedge does to GS unless told: the scanner's ~ stays a ~ (and the GS1 parser
    then rejects the scan), and Alt codes are GS whatever the setting."""
    sent = typing("10A" + GS + "21B", "us", gs_key="~")
    assert texts(decode(sent, "us")) == ["10A~21B"]
    events = [*strokes("1 0 SHIFT+A"), *alt_digits("0029"), *strokes("2 1 SHIFT+B ENTER")]
    assert texts(decode(events, "us", gs_key="~")) == ["10A" + GS + "21B"]


def test_an_f_key_without_the_setting_is_an_unknown_key() -> None:
    (scan,) = decode(strokes("A F8 B ENTER"), "us")
    assert scan.error == "key 66 (F8) has no character in layout us"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("ctrl+]", GsKey()),
        ("CTRL+]", GsKey()),
        ("~", GsKey(char="~")),
        ("§", GsKey(char="§")),
        ("f8", GsKey(key=66)),
        ("F13", GsKey(key=183)),
        ("F24", GsKey(key=194)),
    ],
)
def test_gs_key_forms(text: str, parsed: GsKey) -> None:
    assert parse_gs_key(text) == parsed


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("A", "'A' cannot stand for GS: letters, digits and spaces are data in the codes"),
        ("0", "'0' cannot stand for GS"),
        (" ", "' ' cannot stand for GS"),
        ("]", "']' cannot stand for GS: it starts the AIM identifier of every code (]d2 ...)"),
        ("F25", "must be ctrl+] (the scanner types GS as Ctrl+]), one character"),
        ("ctrl+g", "got 'ctrl+g'"),
        ("", "got ''"),
    ],
)
def test_gs_key_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_gs_key(text)


# ---- where scans end, and rejected scans ---------------------------------------------------


def test_unknown_keys_reject_the_scan_and_its_rest_up_to_enter() -> None:
    events = strokes("A B 183 C D ENTER E F ENTER")
    first, second = decode(events, "de")
    assert first == KeyScan(None, "key 183 (F13) has no character in layout de", "ab")
    assert second == KeyScan("ef", None, "ef")


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("240", "key 240 has no character in layout us"),
        ("BACKSPACE", "key 14 (BACKSPACE) has no character in layout us"),
        ("ESC", "key 1 (ESC) has no character in layout us"),
        ("LEFTMETA", "key 125 (LEFTMETA) has no character in layout us"),
    ],
)
def test_keys_without_a_character_are_named(key: str, error: str) -> None:
    (scan,) = decode(strokes(f"A {key} ENTER"))
    assert scan.error == error


def test_releases_of_unknown_keys_and_lone_modifiers_change_nothing() -> None:
    events = [(240, 0), (K["LEFTSHIFT"], 1), (K["LEFTSHIFT"], 0), *strokes("A ENTER")]
    assert texts(decode(events)) == ["a"]


def test_enter_alone_is_no_scan_and_keypad_enter_ends_one() -> None:
    assert decode(strokes("ENTER ENTER")) == []
    assert texts(decode(strokes("A KPENTER B ENTER"))) == ["a", "b"]


def test_tab_ends_a_scan_only_when_configured() -> None:
    assert texts(decode(strokes("A TAB B ENTER"))) == ["a\tb"]
    assert texts(decode(strokes("A TAB B ENTER"), suffix="enter_or_tab")) == ["a", "b"]


def test_a_scan_longer_than_max_length_is_rejected() -> None:
    assert texts(decode(typing("ABCDE", "us"), max_length=5)) == ["ABCDE"]
    (scan,) = decode(typing("ABCDEF", "us"), max_length=5)
    assert scan == KeyScan(None, "scan longer than 5 characters", "ABCDE")


def test_no_enter_within_the_inter_key_timeout_rejects_the_scan() -> None:
    decoder = WedgeDecoder("us", inter_key_timeout=0.5)
    assert decoder.deadline() is None
    for i, (code, value) in enumerate(strokes("A B")):
        assert decoder.key(code, value, 10.0 + i * 0.01) == []
    assert decoder.busy
    assert decoder.deadline() == pytest.approx(10.53)
    assert decoder.expire(10.52) is None
    scan = decoder.expire(10.53)
    assert scan == KeyScan(None, "no Enter within 0.5 s of the last key: incomplete scan", "ab")
    assert decoder.deadline() is None
    assert not decoder.busy


def test_a_key_after_the_timeout_ends_the_old_scan_and_starts_a_new_one() -> None:
    decoder = WedgeDecoder("us", inter_key_timeout=0.5)
    out: list[KeyScan] = []
    for code, value in strokes("A"):
        out += decoder.key(code, value, 1.0)
    for code, value in strokes("B ENTER"):
        out += decoder.key(code, value, 2.0)
    assert texts(out) == [None, "b"]
    assert out[0].typed == "a"


def test_lost_events_reject_the_scan_they_belonged_to() -> None:
    decoder = WedgeDecoder("us", inter_key_timeout=0.5)
    out: list[KeyScan] = []
    for code, value in [*strokes("A"), (K["LEFTSHIFT"], 1)]:
        out += decoder.key(code, value, 1.0)
    decoder.lost("key events were lost", 1.1)
    for code, value in strokes("C ENTER D ENTER"):  # Shift's release was lost: taken as up
        out += decoder.key(code, value, 1.2)
    assert out == [KeyScan(None, "key events were lost", "a"), KeyScan("d", None, "d")]


def test_lost_events_between_scans_are_a_rejection_of_their_own() -> None:
    decoder = WedgeDecoder("us", inter_key_timeout=0.5)
    decoder.lost("key events were lost", 1.0)
    assert decoder.expire(1.5) == KeyScan(None, "key events were lost", "")


def test_abort_hands_on_the_scan_under_way() -> None:
    decoder = WedgeDecoder("us")
    assert decoder.abort("gone") is None
    for code, value in strokes("A B"):
        decoder.key(code, value, 1.0)
    assert decoder.abort("gone") == KeyScan(None, "gone", "ab")
    assert not decoder.busy


# ---- the key codes are the kernel's ----------------------------------------------------------


def test_key_codes_are_evdevs() -> None:
    ecodes = pytest.importorskip("evdev.ecodes", reason="the keyboard extra is not installed")
    for name, code in KEY_CODES.items():
        assert getattr(ecodes, f"KEY_{name}") == code, name
