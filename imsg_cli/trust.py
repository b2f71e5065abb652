"""`imsg verify`, `imsg trust`: whether your contacts' keys are the ones you compared
(`imsg contacts` lists them: `imsg_cli/contacts.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

from imsg_cli.names import resolve
from imsg_cli.output import iso, print_qr
from imsg_cli.render import one_line
from imsg_cli.state import State


def verify(
    ctx: typer.Context,
    to: Annotated[str, typer.Argument(help="The contact's handle, or your nickname for them.")],
    mark: Annotated[bool, typer.Option("--mark", help="Record that you compared the safety number.")] = False,
) -> None:
    """Show the safety number with a contact (text and QR code); compare it in person or over
    a channel you trust, then record it with --mark."""
    state: State = ctx.obj
    with state.client() as client:
        v = client.verify(resolve(client, to), mark=mark)
    out = state.out
    if out.json:
        out.record({"handle": v.handle, "safety_number": v.safety_number, "verified": v.verified, "changed": v.changed})
        return
    if v.changed:
        out.info(f"warning: the safety number with {v.handle} CHANGED; messages to them are held")
    out.line(one_line(v.safety_number))
    print_qr(v.safety_number.replace(" ", ""))
    out.info(
        f"{v.handle}: " + ("verified" if v.verified else f"not verified — compare, then: imsg verify {v.handle} --mark")
    )


def trust(
    ctx: typer.Context,
    to: Annotated[str, typer.Argument(help="The contact whose new safety number you accept.")],
) -> None:
    """Accept a contact's changed identity and send the messages held for it."""
    state: State = ctx.obj
    with state.client() as client:
        sent = client.trust(to)
    out = state.out
    if out.json:  # one row, also when nothing was held: a script learns it worked
        out.record(
            {
                "handle": _canonical(to),
                "trusted": True,
                "sent": [{"id": s.id, "to": s.to, "sent_at": iso(s.sent_at), "devices": s.devices} for s in sent],
            }
        )
        return
    for s in sent:
        out.line(s.id)
    out.info(f"trusting {to}'s current identity; {len(sent)} held message(s) sent")


def _canonical(handle: str) -> str:
    from imsg.handles import canonical_handle

    return canonical_handle(handle)
