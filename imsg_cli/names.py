"""Names beside handles, and contacts addressed by the nickname you gave them.

A nickname is yours (`contacts add --nickname`); a shared name is what the other person
chose for themselves (their profile), so it is marked with `~` wherever it is shown — and
never used to address anyone: a stranger could pick any name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imsg_cli import render

if TYPE_CHECKING:
    from imsg.client import Client


def names(client: Client) -> dict[str, str]:
    """handle -> the name to show beside it: the nickname, else ~shared name (unrendered)."""
    out: dict[str, str] = {}
    for c in client.contacts():
        if c.nickname:
            out[c.handle] = c.nickname
        elif c.profile_name:
            out[c.handle] = "~" + c.profile_name
    return out


def with_name(handle: str, shown: dict[str, str] | None) -> str:
    """`handle (Name)`, rendered safe for a terminal."""
    name = (shown or {}).get(handle)
    return render.one_line(handle) + (f" ({render.one_line(name)})" if name else "")


def resolve(client: Client, to: str) -> str:
    """`to` as a handle: a handle as it is; else the contact whose nickname it is (case
    and surrounding space ignored). Anything else: the library's invalid-handle error."""
    from imsg.errors import InvalidHandleError, UsageError
    from imsg.handles import canonical_handle

    try:
        return canonical_handle(to)
    except InvalidHandleError:
        wanted = to.strip().casefold()
        matches = sorted({c.handle for c in client.contacts() if c.nickname and c.nickname.casefold() == wanted})
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(
                f"{render.one_line(to)!r} is the nickname of several contacts: {', '.join(matches)}",
                hint="give the handle",
            ) from None
        raise
