"""`imsg backup on|now|status|off|restore`."""

from __future__ import annotations

from typing import Annotated

import typer

from imsg_cli.confirm import Yes, confirm
from imsg_cli.output import human_size, iso, local_time
from imsg_cli.state import State

app = typer.Typer(help="Encrypted backups at the relay, under a recovery code only you hold.", no_args_is_help=True)


@app.command("on")
def on(ctx: typer.Context) -> None:
    """Make a recovery code, upload the first backup, and show the code ONCE.

    Write the code down: it is the only way to read the backup (the relay never sees it).
    While backups are on, receive and watch back up once a day on their own."""
    state: State = ctx.obj
    with state.client() as client:
        code = client.backup_on()
    if state.out.json:
        state.out.record({"recovery_code": code})
    else:
        state.out.line(code)
        state.out.info(
            "this is your recovery code: write it down now, it is not shown again.\n"
            "to restore on a new device:  imsg --home NEW backup restore HANDLE CODE"
        )


@app.command("now")
def now(ctx: typer.Context) -> None:
    """Back up now (backups must be on)."""
    state: State = ctx.obj
    with state.client() as client:
        result = client.backup_now()
    if state.out.json:
        state.out.record(
            {"size": result.size, "messages": result.messages, "contacts": result.contacts, "at": iso(result.at)}
        )
    else:
        state.out.line(
            f"backed up {result.messages} messages and {result.contacts} contacts ({human_size(result.size)} encrypted)"
        )


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Whether backups are on, the last one, the next one, and what the relay holds."""
    state: State = ctx.obj
    with state.client() as client:
        s = client.backup_status()
    if state.out.json:
        state.out.record(
            {
                "on": s.on,
                "last_at": iso(s.last_at) if s.last_at else None,
                "size": s.size,
                "next_at": iso(s.next_at) if s.next_at else None,
                "last_error": s.last_error,
                "relay": (
                    {"size": s.relay_size, "updated_at": _iso(s.relay_updated_at)} if s.relay_size is not None else None
                ),
            }
        )
        return
    out = state.out
    if not s.on:
        out.line(
            "backups are off"
            + (
                ""
                if s.relay_size is None
                else f" here; the relay holds a backup of this account from "
                f"{_when(s.relay_updated_at)} (made by another device)"
            )
        )
        return
    out.line(f"backups are on; last {_when(s.last_at)} ({human_size(s.size or 0)}), next due {_when(s.next_at)}")
    if s.last_error:
        out.line(f"the last attempt failed: {s.last_error}")
    out.line(
        "the relay holds "
        + (f"{human_size(s.relay_size)} from {_when(s.relay_updated_at)}" if s.relay_size is not None else "no backup")
    )


@app.command("off")
def off(ctx: typer.Context, yes: Yes = False) -> None:
    """Turn backups off and delete the relay's copy at once. Asks first (--yes: do not)."""
    state: State = ctx.obj
    with state.client() as client:
        confirm("turn backups off and delete the relay's copy?", yes)
        deleted = client.backup_off()
    if state.out.json:
        state.out.record({"on": False, "deleted": deleted})
    else:
        state.out.line("backups are off" + ("; the relay's copy is deleted" if deleted else ""))


@app.command("restore")
def restore(
    ctx: typer.Context,
    handle: Annotated[str, typer.Argument(help="The account's handle.")],
    recovery_code: Annotated[str, typer.Argument(help="The code imsg backup on showed.")],
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="A name for this device (only your devices can read it).")
    ] = "",
) -> None:
    """Restore a backup into this (new) home, as a new device of the account.

    History, contacts and settings come back; sessions start afresh. Your other devices keep working."""
    import platform

    state: State = ctx.obj
    with state.client() as client:
        me = client.backup_restore(handle, recovery_code, name or platform.node())
    from imsg_cli.account import print_whoami

    print_whoami(state, me)


def _iso(ms: int | None) -> str | None:
    return iso(ms) if ms is not None else None


def _when(ms: int | None) -> str:
    """A time the relay or this home reported; a backup record without one says so."""
    return local_time(ms) if ms is not None else "(unknown)"
