"""`imsg retention set|show`: how long this home keeps messages."""

from __future__ import annotations

from typing import Annotated

import typer

from imsg_cli.confirm import Yes, confirm
from imsg_cli.state import State

app = typer.Typer(
    help="How long this home keeps messages: 30d, 1y or forever (the default, as in iMessage). "
    "Older messages are deleted, with their saved attachment files, whenever imsg runs.",
    no_args_is_help=True,
)


@app.command("set")
def set_(
    ctx: typer.Context,
    period: Annotated[str, typer.Argument(metavar="30d|1y|forever", help="Keep messages this long.")],
    yes: Yes = False,
) -> None:
    """Keep messages for PERIOD (30d, 1y, forever); older ones are deleted now and from
    then on whenever imsg runs, with their attachment files. Age counts from when a
    message was sent or stored here, whichever is earlier. A shorter period than the
    current one asks first (--yes: do not)."""
    from imsg.client import retention

    period = retention.parse(period)  # a usage error before anything is opened
    state: State = ctx.obj
    with state.client(retention=False) as client:  # the old setting must not sweep first
        if _ORDER.index(period) < _ORDER.index(client.retention()):
            confirm(f"keep messages only {_phrase(period)}, deleting older ones now?", yes)
        deleted = client.set_retention(period)
    if state.out.json:
        state.out.record({"retention": period, "deleted": deleted})
    else:
        state.out.line(period)
        state.out.info(f"keeping messages {_phrase(period)}; deleted {deleted} older message(s)")


@app.command("show")
def show(ctx: typer.Context) -> None:
    """Print how long messages are kept (forever unless set)."""
    state: State = ctx.obj
    with state.client(retention=False) as client:
        period = client.retention()
    if state.out.json:
        state.out.record({"retention": period})
    else:
        state.out.line(period)


_ORDER = ["30d", "1y", "forever"]  # shortest first


def _phrase(period: str) -> str:
    return {"30d": "for 30 days", "1y": "for 1 year"}.get(period, "forever")
