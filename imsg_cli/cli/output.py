"""One output sink with a human and a JSON mode, and the one place errors become text."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def local_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


class Output:
    def __init__(self, json_mode: bool = False):
        self.json = json_mode

    def record(self, obj: dict[str, Any]) -> None:
        """One JSON object per line on stdout (flushed: scripts read streams live)."""
        sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def line(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def info(self, text: str) -> None:
        """A note for a person; never in JSON mode, never on stdout."""
        if not self.json:
            sys.stderr.write(text + "\n")

    def warning(self, code: str, message: str, **extra: Any) -> None:
        if self.json:
            sys.stderr.write(json.dumps({"warning": code, "message": message, **extra}) + "\n")
        else:
            sys.stderr.write(f"warning: {message}\n")

    def error(self, code: str, message: str, hint: str | None = None, **extra: Any) -> None:
        if self.json:
            doc = {"error": code, "message": message, **extra}
            if hint:
                doc["hint"] = hint
            sys.stderr.write(json.dumps(doc, ensure_ascii=False, default=str) + "\n")
        else:
            sys.stderr.write(f"error: {message}\n")
            if hint:
                sys.stderr.write(f"hint: {hint}\n")
        sys.stderr.flush()

    def table(self, columns: list[str], rows: list[list[str]]) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in columns:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        Console(soft_wrap=True).print(table)


def message_record(m) -> dict[str, Any]:
    return {
        "id": m.id,
        "from": m.sender,
        "to": m.to,
        "text": m.text,
        "sent_at": iso(m.sent_at),
        "direction": m.direction,
        "peer": m.peer,
    }


def print_message(out: Output, m) -> None:
    if out.json:
        out.record(message_record(m))
    else:
        arrow = "→ " + m.to if m.direction == "out" else ""
        who = "you" if m.direction == "out" else m.sender
        out.line(f"[{local_time(m.sent_at)}] {who}{(' ' + arrow) if arrow else ''}: {m.text}")


def print_qr(text: str) -> None:
    """A QR code on stderr, for a person at a terminal (never in pipes or JSON)."""
    if not sys.stderr.isatty():
        return
    import io

    import qrcode

    qr = qrcode.QRCode(border=1)
    qr.add_data(text)
    qr.make()
    buf = io.StringIO()
    qr.print_ascii(out=buf, invert=True)
    sys.stderr.write(buf.getvalue())
