"""`imsg chats`, `imsg history` — from the local store, no relay needed."""

from __future__ import annotations

from typing import Annotated

import typer

from imsg_cli.output import iso, local_time, print_message
from imsg_cli.state import State


def chats(ctx: typer.Context) -> None:
    """List conversations, most recent first."""
    state: State = ctx.obj
    with state.client() as client:
        rows = client.chats()
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
            ["with", "messages", "last", "when"],
            [[c.peer_handle, str(c.messages), _preview(c.last_text), local_time(c.last_at)] for c in rows],
        )


def history(
    ctx: typer.Context,
    to: Annotated[str, typer.Argument(help="The other party's handle.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100000, help="Newest N messages.")] = 50,
) -> None:
    """Show a conversation, oldest first."""
    state: State = ctx.obj
    with state.client() as client:
        for m in client.history(to, limit):
            print_message(state.out, m)


def _preview(text: str, width: int = 40) -> str:
    """The start of a message on one line (the table renders it safe: render.one_line)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def delete(
    ctx: typer.Context,
    message_ids: Annotated[list[str], typer.Argument(help="Ids of messages to delete from this home.")],
) -> None:
    """Delete messages from this home, and the attachment files saved for them."""
    state: State = ctx.obj
    with state.client() as client:
        n = client.delete_messages(message_ids)
    if state.out.json:
        state.out.record({"deleted": n})
    else:
        state.out.info(f"deleted {n} message(s)")
