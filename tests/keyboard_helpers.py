"""Keyboard-wedge tests' key strokes: what a scanner set to a layout sends, as evdev events."""

from __future__ import annotations

from drivers.keyboard_scanner.keymap import CTRL_CHORD, GS, KEY_CODES, LAYOUTS, parse_gs_key

K = KEY_CODES
MODS = {"SHIFT": "LEFTSHIFT", "CTRL": "LEFTCTRL", "ALT": "LEFTALT", "ALTGR": "RIGHTALT"}
GS1_CHARSET = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
"""GS1's 82 characters (GS1 General Specifications, figure 7.11-1): what AI values hold."""
Event = tuple[int, int]


def stroke(spec: str) -> list[Event]:
    """``"SHIFT+ALTGR+Q"``: modifiers down, the key down and up, modifiers up."""
    *mods, key = spec.split("+") if spec != "+" else ["+"]
    codes = [K[MODS.get(m, m)] for m in mods]
    last = K[key] if key in K else int(key)
    return [
        *[(c, 1) for c in codes],
        (last, 1),
        (last, 0),
        *[(c, 0) for c in reversed(codes)],
    ]


def strokes(specs: str) -> list[Event]:
    """Space-separated strokes: ``"SHIFT+A B ENTER"``."""
    return [e for spec in specs.split() for e in stroke(spec)]


def typing(text: str, layout: str, gs_key: str = CTRL_CHORD, end: str = "ENTER") -> list[Event]:
    """The key events a scanner set to ``layout`` sends for ``text``: each character's key at
    the lowest level that types it (a dead key followed by Space), GS as ``gs_key`` says."""
    board = LAYOUTS[layout]
    gs = parse_gs_key(gs_key)
    events: list[Event] = []
    for char in text:
        if char == GS and gs.key is not None:
            events += [(gs.key, 1), (gs.key, 0)]
            continue
        if char == GS and gs.char is None:
            code, level = min(board.strokes("]"), key=lambda s: s[1])
            ctrl = K["LEFTCTRL"]
            events += [(ctrl, 1), *_at(code, level, board.altgr), (ctrl, 0)]
            continue
        want = gs.char if char == GS else char
        assert want is not None
        found = board.strokes(want)
        assert found, f"{want!r} is not on layout {layout}"
        code, level = min(found, key=lambda s: (s in board.dead, s[1]))
        events += _at(code, level, board.altgr)
        if (code, level) in board.dead:
            events += stroke("SPACE")
    return events + stroke(end)


def _at(code: int, level: int, has_altgr: bool) -> list[Event]:
    mods = []
    if level in (2, 3):
        assert has_altgr
        mods.append(K["RIGHTALT"])
    if level in (1, 3):
        mods.append(K["LEFTSHIFT"])
    return [*[(m, 1) for m in mods], (code, 1), (code, 0), *[(m, 0) for m in reversed(mods)]]
