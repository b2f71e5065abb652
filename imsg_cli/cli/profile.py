"""`imsg profile share`: who gets your name and photo; and the question the `ask` policy
puts before a first message to someone."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from imsg_cli.cli.state import State

app = typer.Typer(no_args_is_help=True, help="Your name and photo, and whom they are shared with.")


def share_answer(client, to: str, given: str | None) -> str | None:
    """The answer for sharing our profile with `to`: the one given on the command line;
    else, when the `ask` policy needs one and a person is at the terminal, theirs; else
    None (a script without --share-profile shares nothing new)."""
    if given is not None:
        if given not in ("yes", "no"):
            from imsg_cli.errors import UsageError

            raise UsageError("--share-profile takes yes or no")
        return given
    if not client.share_pending(to):
        return None
    if sys.stdin is None or not sys.stdin.isatty() or not sys.stderr.isatty():
        return None
    return "yes" if typer.confirm(f"share your name and photo with {to}?", default=False, err=True) else "no"


@app.command()
def share(
    ctx: typer.Context,
    policy: Annotated[str, typer.Argument(metavar="contacts|ask|off", help="Who gets your name and photo.")],
) -> None:
    """Choose who gets your name and photo (with your next message to them).

    contacts: everyone in your contacts (imsg contacts add). ask: you are asked before a
    first message to someone (scripts: imsg send --share-profile yes|no). off: nobody from
    now on; your profile key is rotated and the relay's copy re-encrypted, so people who had
    it stop seeing updates. What they already saved stays on their devices."""
    state: State = ctx.obj
    with state.client() as client:
        client.set_share_policy(policy)
    if state.out.json:
        state.out.record({"share": policy})
    else:
        state.out.info(f"sharing your name and photo: {policy}")
