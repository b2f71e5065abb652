"""`imsg reachable add|verify|list|remove|start-from|receive` and `imsg lookup`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from imsg_cli.state import State

if TYPE_CHECKING:
    from imsg.protocol.stores import OwnHandle

app = typer.Typer(help="The phone numbers and e-mail addresses you can be reached at.", no_args_is_help=True)

HandleArg = Annotated[str, typer.Argument(help="An e-mail address or E.164 phone number of yours.")]


def _print(state: State, rows: list[OwnHandle]) -> None:
    out = state.out
    if out.json:
        for h in rows:
            out.record({"handle": h.handle, "state": h.state, "receiving": h.receiving, "start_from": h.start_from})
        return
    if not rows:
        out.info("no handles")
        return
    out.table(
        ["handle", "state", "receives", "starts"],
        [[h.handle, h.state, "yes" if h.receiving else "no", "yes" if h.start_from else ""] for h in rows],
    )


def _pending_hint(state: State, h: OwnHandle) -> None:
    if h.state == "pending":
        state.out.info(f"a code was sent to {h.handle}; confirm it with: imsg reachable verify {h.handle} CODE")
    elif h.state == "unverified":
        state.out.info(f"{h.handle} is claimed, unverified: this relay does not verify handles")


@app.command("add")
def add(ctx: typer.Context, handle: HandleArg) -> None:
    """Add a handle; a relay that verifies sends it a 6-digit code (valid 10 minutes)."""
    state: State = ctx.obj
    with state.client() as client:
        h = client.reachable_add(handle)
    _print(state, [h])
    _pending_hint(state, h)


@app.command("verify")
def verify(
    ctx: typer.Context,
    handle: HandleArg,
    code: Annotated[str, typer.Argument(help="The 6-digit code the handle received.")],
) -> None:
    """Confirm a pending handle with the code it received."""
    state: State = ctx.obj
    with state.client() as client:
        h = client.reachable_verify(handle, code)
    _print(state, [h])


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Each handle: verified or pending, whether it receives, whether new conversations start from it."""
    state: State = ctx.obj
    with state.client() as client:
        rows = client.reachable_list()
    _print(state, rows)


@app.command("remove")
def remove(ctx: typer.Context, handle: HandleArg) -> None:
    """Remove a handle from this account (it stops being discoverable at once)."""
    state: State = ctx.obj
    with state.client() as client:
        h = client.reachable_remove(handle)
    if state.out.json:
        state.out.record({"handle": h.handle, "removed": True})
    else:
        state.out.info(f"removed {h.handle}")


@app.command("start-from")
def start_from(ctx: typer.Context, handle: HandleArg) -> None:
    """Start new conversations from this handle (`imsg send --from` overrides it once)."""
    state: State = ctx.obj
    with state.client() as client:
        client.reachable_start_from(handle)
        rows = client.reachable_list(refresh=False)
    _print(state, rows)


@app.command("receive")
def receive(
    ctx: typer.Context,
    handle: HandleArg,
    off: Annotated[bool, typer.Option("--off", help="Stop receiving: no longer discoverable.")] = False,
    on: Annotated[bool, typer.Option("--on", help="Receive again.")] = False,
) -> None:
    """Stop (--off) or resume (--on) receiving at a handle without removing it."""
    from imsg.errors import UsageError

    if off == on:
        raise UsageError("say --off or --on")
    state: State = ctx.obj
    with state.client() as client:
        h = client.reachable_receive(handle, on)
    _print(state, [h])


def lookup(
    ctx: typer.Context, handles: Annotated[list[str], typer.Argument(help="Phone numbers or e-mail addresses.")]
) -> None:
    """Whether each handle is reachable by imsg. Private: the relay learns neither the
    handles nor their blinded forms, only buckets shared by many registered handles."""
    state: State = ctx.obj
    with state.client() as client:
        rows = client.lookup(handles)
    out = state.out
    if out.json:
        for r in rows:
            out.record({"handle": r.handle, "reachable": r.reachable})
        return
    out.table(
        ["handle", "imsg"],
        [[r.handle, ("yes" if r.verified else "yes (unverified)") if r.reachable else "no"] for r in rows],
    )
