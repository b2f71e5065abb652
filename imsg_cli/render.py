"""The one terminal-safe renderer for text another party controls.

Message text, names (shared names, nicknames, device names), file names, handles as
displayed, and error or warning messages that quote what a relay or a sender said all pass
through here before they reach a terminal in human mode. Nothing that arrives can then
drive the terminal (escape sequences retitle it, hide text, move the cursor), make a line
look like something imsg printed (a bare CR overwrites the start of the line, a newline
starts a forged one), or reorder what is shown (bidi overrides):

- control characters (C0 including ESC, CR, BEL; DEL; C1) and Unicode format characters
  that can disguise text (bidi embeddings, overrides and isolates, invisible separators,
  tag characters, line and paragraph separators) are shown escaped and visible: `\\x1b`,
  `\\u202e`, `\\U000e0041`;
- in message text a newline is kept, but every continuation line is indented, so no
  message can start a line of its own; in one-line fields (names, handles, file names)
  a newline is escaped too.

`--json` keeps the exact text: `json_line` writes the same characters, only as JSON escapes
for the ones above, so the parsed value is unchanged and a JSON line is safe on a terminal.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

# Format characters (category Cf) that are kept as they are: joiners build emoji sequences
# (ZWJ) and are needed by Persian and Indic scripts (ZWNJ); they cannot hide or move text.
_KEEP_FORMAT = frozenset({"\u200c", "\u200d"})

# Indentation of a message's continuation lines: wider than nothing, so a continuation can
# never begin where imsg's own lines begin.
CONTINUATION = "    "


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


# Invisible letters (category Lo) that render as blank space: a name made of them looks
# empty, or like padding before forged text.
_INVISIBLE_LETTERS = frozenset({"\u115f", "\u1160", "\u3164", "\uffa0"})


def unsafe(ch: str) -> bool:
    """Whether one character is shown escaped (the rule; _UNSAFE is its compiled form)."""
    if ch in _KEEP_FORMAT:
        return False
    if ch in _INVISIBLE_LETTERS:
        return True
    # Cc: C0, DEL, C1; Cf: bidi controls, invisible operators, tags, BOM; Zl/Zp: U+2028/9
    # (line breaks to some terminals and viewers); Cs: lone surrogates (from undecodable bytes).
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")


# Every code point `unsafe` is true for, as one character class, written out so that no
# command pays for scanning the Unicode database at start-up (tests/unit/test_render.py
# checks it against `unsafe` for every code point of this Python's Unicode version).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2"
    "\u115f-\u1160\u180e\u200b\u200e-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f"
    "\u3164\ud800-\udfff\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)


def one_line(text: str) -> str:
    """A name, handle, file name, id or any one-line field, safe to print: every unsafe
    character (newlines included) escaped."""
    return _UNSAFE.sub(lambda m: _escape(m.group()), text)


def message_text(text: str, indent: str = CONTINUATION) -> str:
    """Message text, safe to print: newlines kept (a CR LF pair counts as one), every
    continuation line starting with `indent`, everything else unsafe escaped."""
    lines = text.replace("\r\n", "\n").split("\n")
    return ("\n" + indent).join(one_line(line) for line in lines)


def has_unsafe(text: str) -> bool:
    return _UNSAFE.search(text) is not None


def _json_escape(m: re.Match[str]) -> str:
    n = ord(m.group())
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000  # a UTF-16 surrogate pair, as JSON spells characters beyond the BMP
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def json_line(obj: Any) -> str:
    """`obj` as one compact JSON line: readable UTF-8, except that every character a
    terminal could act on is a \\u escape (json.dumps already escapes C0; this adds DEL, C1
    and the format characters). The decoded value is exactly the original."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
    # Unsafe characters can only occur inside JSON strings, where a \\u escape is valid.
    return _UNSAFE.sub(_json_escape, text)


def width(text: str) -> int:
    """Terminal columns `text` takes (after one_line): wide East Asian characters count
    two, combining marks none."""
    cols = 0
    for ch in text:
        if unicodedata.combining(ch) or ch in _KEEP_FORMAT or ch == "\ufe0f":
            continue
        cols += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return cols


def table(columns: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, two spaces apart, never cut
    or wrapped (so `imsg chats | grep` finds what is there). Cells are rendered one_line."""
    cells = [[one_line(c) for c in row] for row in [columns, *rows]]
    widths = [max(width(row[i]) for row in cells) for i in range(len(columns))]
    out = []
    for row in cells:
        padded = [c + " " * (widths[i] - width(c)) for i, c in enumerate(row)]
        out.append("  ".join(padded).rstrip())
    return "\n".join(out)
