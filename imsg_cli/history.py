"""`imsg chats`, `imsg history` — from the local store, no relay needed."""

from __future__ import annotations

from typing import Annotated

import typer

from imsg.errors import LocalStateError
from imsg_cli.confirm import Yes, confirm
from imsg_cli.names import names, resolve
from imsg_cli.output import iso, local_time, print_message
from imsg_cli.render import one_line
from imsg_cli.state import State


class UnknownMessageError(LocalStateError):
    """no such message in this home"""

    code = "unknown_message"


def chats(ctx: typer.Context) -> None:
    """List conversations, most recent first."""
    state: State = ctx.obj
    with state.client() as client:
        rows = client.chats()
        shown = {} if state.out.json else names(client)
    out = state.out
    if out.json:
        for c in rows:
            out.record(
                {
                    "peer": c.peer_handle,
                    "account_id": c.peer_account_id,
                    "messages": c.messages,
                    "last_text": c.last_text,
                    "last_at": iso(c.last_at),
                }
            )
    elif not rows:
        out.info("no conversations yet")
    else:
        out.table(
            ["with", "name", "messages", "last", "when"],
            [
                [
                    c.peer_handle,
                    shown.get(c.peer_handle, ""),
                    str(c.messages),
                    _preview(c.last_text),
                    local_time(c.last_at),
                ]
                for c in rows
            ],
        )


def history(
    ctx: typer.Context,
    to: Annotated[str, typer.Argument(help="The other party's handle, or a contact's nickname.")],
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=100000, metavar="N", help="Newest N messages.")
    ] = 50,
) -> None:
    """Show a conversation, oldest first."""
    state: State = ctx.obj
    with state.client() as client:
        to = resolve(client, to)
        shown = {} if state.out.json else names(client)
        for m in client.history(to, limit):
            print_message(state.out, m, shown)


def _preview(text: str, width: int = 40) -> str:
    """The start of a message on one line (the table renders it safe: render.one_line)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def delete(
    ctx: typer.Context,
    message_ids: Annotated[list[str], typer.Argument(help="Ids of messages to delete from this home.")],
    yes: Yes = False,
) -> None:
    """Delete messages from this home, and the attachment files saved for them. Asks
    first (--yes: do not). An id this home does not hold is an error (exit 3), as rm
    does: the others are still deleted."""
    state: State = ctx.obj
    ids = list(dict.fromkeys(message_ids))  # each once, in the order given
    with state.client() as client:
        confirm(f"delete {len(ids)} message(s) from this home, with their saved attachment files?", yes)
        # One at a time: the count tells which ids this home did not hold.
        unknown = [mid for mid in ids if client.delete_messages([mid]) == 0]
    n = len(ids) - len(unknown)
    if n:
        if state.out.json:
            state.out.record({"deleted": n})
        else:
            state.out.info(f"deleted {n} message(s)")
    if unknown:
        raise UnknownMessageError(
            f"no such message in this home: {', '.join(map(one_line, unknown))}",
            hint="message ids are shown by imsg history (and with --json)",
        )
