"""`imsg send`, `imsg receive`, `imsg watch`."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from imsg_cli.cli.output import print_message
from imsg_cli.cli.state import State


def send(
    ctx: typer.Context,
    to: Annotated[str, typer.Argument(help="Recipient handle (e-mail or +phone).")],
    text: Annotated[Optional[str], typer.Argument(help="Message text; read from stdin when omitted or '-'.")] = None,
    on_key_change: Annotated[str, typer.Option(
        "--on-key-change", metavar="hold|accept",
        help="If the recipient's safety number changed: hold the message (default, exit 6) or accept "
             "the new key and send.")] = "hold",
) -> None:
    """Send an end-to-end encrypted message. Prints the message id."""
    from imsg_cli.errors import UsageError

    state: State = ctx.obj
    if text is None or text == "-":
        if sys.stdin is None or (sys.stdin.isatty() and text is None):
            raise UsageError("no message text", hint="give TEXT, or pipe it on stdin with '-'")
        text = sys.stdin.read()
        if text.endswith("\n"):
            text = text[:-1]
    if not text:
        raise UsageError("empty message")
    with state.client() as client:
        sent = client.send(to, text, on_key_change=on_key_change)
        _report_problems(state, client)  # e.g. an earlier queued message the relay refused
    out = state.out
    if out.json:
        from imsg_cli.cli.output import iso

        out.record({"id": sent.id, "to": sent.to, "sent_at": iso(sent.sent_at), "devices": sent.devices})
    else:
        out.line(sent.id)
        out.info(f"sent to {sent.to}")


def _report_problems(state: State, client) -> int:
    """Print dropped envelopes; return how many were security rejections."""
    rejected = 0
    for p in client.problems:
        if p.code == "rejected":
            rejected += 1
            state.out.error("rejected_message", f"rejected message {p.message_id}: {p.message}",
                            message_id=p.message_id)
        elif p.code == "identity_changed":
            rejected += 1
            state.out.error("identity_changed", p.message, message_id=p.message_id)
        elif p.code == "devices_changed":
            state.out.warning(p.code, p.message)
        else:
            state.out.warning(p.code, f"ignored message {p.message_id}: {p.message}", message_id=p.message_id)
    client.problems.clear()
    return rejected


def receive(
    ctx: typer.Context,
    wait: Annotated[float, typer.Option("--wait", min=0, max=3600,
                                        help="Wait up to SECONDS for a first message.")] = 0,
) -> None:
    """Fetch, decrypt, store and print waiting messages (oldest first)."""
    import time

    from imsg_cli.errors import SecurityError

    state: State = ctx.obj
    deadline = time.monotonic() + wait
    with state.client() as client:
        messages = client.receive(wait=min(wait, 60))
        while not messages and time.monotonic() < deadline:
            messages = client.receive(wait=min(60, max(1, deadline - time.monotonic())))
        for m in messages:
            print_message(state.out, m)
        rejected = _report_problems(state, client)
    if rejected:
        raise SecurityError(f"{rejected} message(s) failed authentication and were dropped",
                            hint="the relay or a sender sent tampered or forged data")


def watch(ctx: typer.Context) -> None:
    """Print messages as they arrive, until interrupted (the relay pushes; no polling)."""
    state: State = ctx.obj
    state.out.info("watching for messages; Ctrl-C to stop")
    with state.client() as client:
        for m in client.watch():
            print_message(state.out, m)
            _report_problems(state, client)
