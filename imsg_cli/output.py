"""One output sink with a human and a JSON mode, and the one place errors become text."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from imsg_cli import render

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from imsg.client.results import Message


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def local_time(ms: int) -> str:
    """A time for people: this machine's time zone (JSON says ISO 8601 UTC: `iso`)."""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


class Output:
    def __init__(self, json_mode: bool = False):
        self.json = json_mode

    def record(self, obj: dict[str, Any]) -> None:
        """One JSON object per line on stdout (flushed: scripts read streams live)."""
        sys.stdout.write(render.json_line(obj) + "\n")
        sys.stdout.flush()

    def line(self, text: str = "") -> None:
        """A line of data for a person. Callers render what another party controls first
        (imsg_cli.render); the text here is printed as it is."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def info(self, text: str) -> None:
        """A note for a person; never in JSON mode, never on stdout. Control characters in
        it are shown escaped (a note may name a handle or a file)."""
        if not self.json:
            sys.stderr.write(_notes(text) + "\n")

    def warning(self, code: str, message: str, **extra: Any) -> None:
        if self.json:
            sys.stderr.write(render.json_line({"warning": code, "message": message, **extra}) + "\n")
        else:
            sys.stderr.write(f"warning: {render.message_text(message)}\n")
        sys.stderr.flush()

    def error(self, code: str, message: str, hint: str | None = None, **extra: Any) -> None:
        """An error; its message may quote a relay's or a sender's words: rendered safe, and
        continuation lines indented, so it cannot forge a line of its own."""
        if self.json:
            doc = {"error": code, "message": message, **extra}
            if hint:
                doc["hint"] = hint
            sys.stderr.write(render.json_line(doc) + "\n")
        else:
            sys.stderr.write(f"error: {render.message_text(message)}\n")
            if hint:
                sys.stderr.write(f"hint: {render.message_text(hint)}\n")
        sys.stderr.flush()

    def table(self, columns: list[str], rows: list[list[str]]) -> None:
        """A plain table on stdout, never cut to the terminal's width (see render.table)."""
        self.line(render.table(columns, rows))


def _notes(text: str) -> str:
    # Our own multi-line notes keep their lines; anything else unsafe is escaped.
    return "\n".join(render.one_line(line) for line in text.split("\n"))


def message_record(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "from": m.sender,
        "to": m.to,
        "text": m.text,
        "sent_at": iso(m.sent_at),
        "direction": m.direction,
        "peer": m.peer,
        "attachments": [
            {
                "id": a.id,
                "name": a.name,
                "size": a.size,
                "type": a.type,
                **({"path": a.saved_path} if a.saved_path else {}),
            }
            for a in m.attachments
        ],
    }


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_message(out: Output, m: Message, names: dict[str, str] | None = None) -> None:
    """One message: `[time] who: text`, who with the name beside the handle (`names`:
    imsg_cli.names); an attachment line says how to save it (by the message's id)."""
    from imsg_cli.names import with_name

    if out.json:
        out.record(message_record(m))
        return
    # Everything but the time came from a sender (or a relay): rendered safe, continuation
    # lines indented, so no message can pass for a line of imsg's own.
    arrow = " → " + with_name(m.to, names) if m.direction == "out" else ""
    who = "you" if m.direction == "out" else with_name(m.sender, names)
    out.line(f"[{local_time(m.sent_at)}] {who}{arrow}: {render.message_text(m.text)}")
    for a in m.attachments:
        out.line(
            f"    [attachment] {render.one_line(a.name)} ({human_size(a.size)}, {render.one_line(a.type)})"
            + (
                f" saved to {render.one_line(a.saved_path)}"
                if a.saved_path
                else f"; save it with: imsg attachment save {render.one_line(m.id)}"
            )
        )


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


class Transfers:
    """Progress bars on stderr for transfers that take a moment; nothing at all when
    stderr is not a terminal or output is JSON. Use as a callback: (name, bytes, total)."""

    def __init__(self, out: Output):
        self._enabled = not out.json and sys.stderr.isatty()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Transfers:
        if self._enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                ProgressColumn,
                Task,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            class Speed(ProgressColumn):
                """Bytes per second in binary units (rich's own column says MB/s; imsg
                says KiB and MiB everywhere)."""

                def render(self, task: Task) -> Text:
                    speed = task.finished_speed or task.speed
                    return Text("?" if speed is None else f"{human_size(speed)}/s")

            progress = self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                Speed(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, name: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(name)
        if task is None:
            task = self._tasks[name] = self._progress.add_task(render.one_line(name)[:40], total=total)
        self._progress.advance(task, done)

    @property
    def callback(self) -> Transfers | None:
        return self if self._enabled else None
