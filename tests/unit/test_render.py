"""imsg_cli.render: the terminal-safe rendering of what another party controls."""

from __future__ import annotations

import io
import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imsg_cli import render
from imsg_cli.output import Output


def test_compiled_class_matches_the_rule_for_every_code_point():
    wrong = [n for n in range(0x110000) if bool(render._UNSAFE.fullmatch(chr(n))) != render.unsafe(chr(n))]
    assert wrong == [], [hex(n) for n in wrong[:20]]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("a\x1b[8mb", "a\\x1b[8mb"),
        ("a\rb", "a\\rb"),
        ("a\nb", "a\\nb"),
        ("\x9b2J", "\\x9b2J"),
        ("x\x7f", "x\\x7f"),
        ("\u202eabc\u202c", "\\u202eabc\\u202c"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("\u2028", "\\u2028"),
        ("\U000e0041", "\\U000e0041"),
        ("\u3164", "\\u3164"),  # an invisible letter
        ("👩\u200d👩\u200d👧 café 日本", "👩\u200d👩\u200d👧 café 日本"),  # ZWJ emoji, accents, CJK kept
    ],
)
def test_one_line(text, shown):
    assert render.one_line(text) == shown


def test_message_text_keeps_lines_and_indents_continuations():
    assert render.message_text("one\ntwo\r\nthree\rfour") == "one\n    two\n    three\\rfour"


@given(st.text())
def test_rendered_text_holds_nothing_unsafe(text):
    for shown in (render.one_line(text), render.message_text(text)):
        assert not any(render.unsafe(ch) and ch != "\n" for ch in shown)
    assert "\n" not in render.one_line(text)
    for line in render.message_text(text).split("\n")[1:]:
        assert line.startswith(render.CONTINUATION)


@given(st.dictionaries(st.text(max_size=5), st.text()))
def test_json_line_is_exact_and_terminal_safe(doc):
    line = render.json_line(doc)
    assert json.loads(line) == doc
    assert not any(render.unsafe(ch) for ch in line)


def test_table_never_cuts_and_pads_by_display_width():
    rows = [["carol@example.com" * 6, "日本", "x"], ["a", "b\x1b[8m", "y"]]
    text = render.table(["with", "name", "z"], rows)
    lines = text.split("\n")
    assert "carol@example.com" * 6 in lines[1]
    assert "b\\x1b[8m" in lines[2]
    # The third column starts at the same column on every line.
    assert len({render.width(line[: line.rindex(" ") + 1]) for line in lines}) == 1


def test_errors_and_warnings_quoting_remote_data_are_escaped(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    out = Output(False)
    out.error("relay_refused", "relay refused: \x1b]0;x\x07\nerror: forged", "hint\rforged")
    out.warning("x", "ignored: \x1b[8m")
    text = err.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert text.splitlines() == [
        "error: relay refused: \\x1b]0;x\\x07",
        "    error: forged",
        "hint: hint\\rforged",
        "warning: ignored: \\x1b[8m",
    ]
