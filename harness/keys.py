"""Typing on the guest's keyboard key by key, as a person at its console does.

QMP's `send-key` presses keys by position: QEMU's key codes (qcodes) name the keys of a
US keyboard. What a character takes therefore depends on the layout the guest loaded:
on a German layout the key a US keyboard labels Z types "y", and "@" is AltGr+Q. A test
that types a passphrase this way, not on the serial line, proves the layout is in force.
"""

from __future__ import annotations

import string
import time
from collections.abc import Mapping

from harness.qmp import Qmp

# A character's keys, pressed together (modifiers first) and released together.
Chord = tuple[str, ...]

US_PLAIN = {
    "-": "minus", "=": "equal", "[": "bracket_left", "]": "bracket_right",
    ";": "semicolon", "'": "apostrophe", "`": "grave_accent", "\\": "backslash",
    ",": "comma", ".": "dot", "/": "slash",
}  # fmt: skip
US_SHIFTED = {
    "_": "minus", "+": "equal", "{": "bracket_left", "}": "bracket_right",
    ":": "semicolon", '"': "apostrophe", "~": "grave_accent", "|": "backslash",
    "<": "comma", ">": "dot", "?": "slash",
    **dict(zip(")!@#$%^&*(", string.digits, strict=True)),
}  # fmt: skip
# German (de, the "nodeadkeys" behaviour for the characters listed): Y and Z swap places,
# the digits' shifted characters differ, and AltGr (right Alt) reaches @, EUR and braces.
DE_PLAIN = {
    "y": "z", "z": "y", "ß": "minus", "ü": "bracket_left", "+": "bracket_right",
    "ö": "semicolon", "ä": "apostrophe", "#": "backslash", ",": "comma", ".": "dot",
    "-": "slash", "<": "less",
}  # fmt: skip
DE_SHIFTED = {
    "Y": "z", "Z": "y", "?": "minus", "*": "bracket_right", "'": "backslash",
    ";": "comma", ":": "dot", "_": "slash", ">": "less",
    **dict(zip('=!"§$%&/()', string.digits, strict=True)),
}  # fmt: skip
DE_ALTGR = {
    "@": "q", "€": "e", "{": "7", "[": "8", "]": "9", "}": "0", "\\": "minus",
    "~": "bracket_right", "|": "less",
}  # fmt: skip


def layout(
    plain: Mapping[str, str], shifted: Mapping[str, str], altgr: Mapping[str, str]
) -> dict[str, Chord]:
    """A layout's chords: letters and digits where a US keyboard has them, unless the
    layout's own tables (applied last) put a character elsewhere."""
    chords: dict[str, Chord] = {" ": ("spc",), "\n": ("ret",)}
    chords.update({c: (c,) for c in string.ascii_lowercase + string.digits})
    chords.update({c.upper(): ("shift", c) for c in string.ascii_lowercase})
    chords.update({c: (key,) for c, key in plain.items()})
    chords.update({c: ("shift", key) for c, key in shifted.items()})
    chords.update({c: ("alt_r", key) for c, key in altgr.items()})
    return chords


LAYOUTS: dict[str, dict[str, Chord]] = {
    "us": layout(US_PLAIN, US_SHIFTED, {}),
    "de": layout(DE_PLAIN, DE_SHIFTED, DE_ALTGR),
}


def chords_for(text: str, keymap: str = "us") -> list[Chord]:
    """The chords that type text on a console with the keymap loaded."""
    chords = LAYOUTS[keymap]
    missing = sorted(set(text) - chords.keys())
    if missing:
        raise ValueError(f"keymap {keymap!r}: no key here types {''.join(missing)!r}")
    return [chords[c] for c in text]


def type_text(qmp: Qmp, text: str, keymap: str = "us", pause: float = 0.05) -> None:
    """Type text on the guest's keyboard. The pause between keys keeps an emulated
    guest, which may be busy for a moment, from missing a key press."""
    for chord in chords_for(text, keymap):
        qmp.execute("send-key", keys=[{"type": "qcode", "data": key} for key in chord])
        time.sleep(pause)
