"""`imsg sealed status|allow-anyone|only`: who may send you sealed messages, and whether
yours may ever go without it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from imsg_cli.state import State

if TYPE_CHECKING:
    from imsg.client.results import SealedStatus

app = typer.Typer(help="Sealed sender: the relay does not learn who sent a message.", no_args_is_help=True)

OnOff = Annotated[str, typer.Argument(metavar="on|off", help="on or off")]


def _flag(value: str) -> bool:
    from imsg.errors import UsageError

    if value not in ("on", "off"):
        raise UsageError(f"expected on or off, not {value!r}")
    return value == "on"


def _print(state: State, st: SealedStatus) -> None:
    from imsg_cli.output import iso

    out = state.out
    if out.json:
        out.record(
            {
                "sealed_only": st.sealed_only,
                "allow_anyone": st.allow_anyone,
                "access_key_set": st.access_key_set,
                "relay_keys": list(st.relay_keys),
                "certificate_expires_at": iso(st.certificate_expires_at) if st.certificate_expires_at else None,
            }
        )
        return
    out.line(
        f"sealed messages to you:  {'from anyone' if st.allow_anyone else 'only from people you shared your profile with'}"
    )
    out.line(
        f"your messages:           {'sealed only (never sent with your identity)' if st.sealed_only else 'sealed when the recipient allows it, else identified'}"
    )
    out.line(f"access key at the relay: {'set' if st.access_key_set else 'not set'}")
    out.line(f"trusted relay keys:      {', '.join(st.relay_keys) or 'none yet'}")


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Show who may send you sealed messages and how yours are sent."""
    state: State = ctx.obj
    with state.client() as client:
        st = client.sealed().status()
    _print(state, st)


@app.command("allow-anyone")
def allow_anyone(ctx: typer.Context, value: OnOff) -> None:
    """Accept sealed messages from anyone (on), or only from people who have your profile (off).

    Off (the default): strangers can still write to you, but the relay then sees who they are."""
    on = _flag(value)
    state: State = ctx.obj
    with state.client() as client:
        client.sealed().publish_access(allow_anyone=on)
        st = client.sealed().status()
    _print(state, st)


@app.command("only")
def only(ctx: typer.Context, value: OnOff) -> None:
    """Send only sealed (on): a message that cannot go sealed waits in the outbox instead of
    going out with your identity (imsg send then exits 5, error sealed_only)."""
    on = _flag(value)
    state: State = ctx.obj
    with state.client() as client:
        client.sealed().set_sealed_only(on)
        st = client.sealed().status()
    _print(state, st)
