"""`imsg contacts` (list), `contacts add`, `contacts remove`: your address book. The people
in it are whom the `contacts` share policy gives your name and photo; each row shows the
name a contact shares with you, or the nickname you gave them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from imsg_cli.confirm import Yes, confirm
from imsg_cli.output import human_size
from imsg_cli.render import one_line
from imsg_cli.state import State

if TYPE_CHECKING:
    from imsg.client.results import ContactInfo

app = typer.Typer(
    invoke_without_command=True, no_args_is_help=False, help="Your contacts: list (no subcommand), add, remove, photo."
)


@app.callback()
def contacts(ctx: typer.Context) -> None:
    """List contacts: name (shared by them, or your nickname), verified, unverified, or
    changed (safety number changed)."""
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    with state.client() as client:
        rows = client.contacts()
    out = state.out
    if out.json:
        for c in rows:
            out.record(_record(c))
    elif not rows:
        out.info("no contacts yet")
    else:
        # The account fingerprint is in --json and in imsg verify; without it the table fits
        # an 80-column terminal.
        out.table(
            ["handle", "name", "state", "contact", "devices", "held"],
            [
                [
                    c.handle + ("" if c.handle_verified else " (unverified)"),
                    _shown_name(c),
                    c.state.upper() if c.state == "changed" else c.state,
                    "yes" if c.in_contacts else "",
                    str(c.devices),
                    str(c.held) if c.held else "",
                ]
                for c in rows
            ],
        )


def _shown_name(c: ContactInfo) -> str:
    if c.nickname:
        return c.nickname
    return f"{c.profile_name} (shared)" if c.profile_name else ""


def _record(c: ContactInfo) -> dict[str, Any]:
    # A missing value is null (never ""), as in every other --json row.
    name_source = "nickname" if c.nickname else ("shared" if c.profile_name else None)
    return {
        "handle": c.handle,
        "name": c.nickname or c.profile_name or None,
        "name_source": name_source,
        "nickname": c.nickname or None,
        "shared_name": c.profile_name or None,
        "in_contacts": c.in_contacts,
        "sharing_with": c.sharing,
        "account_id": c.account_id,
        "state": c.state,
        "verified": c.verified,
        "devices": c.devices,
        "fingerprint": c.fingerprint,
        "held": c.held,
        "handle_verified": c.handle_verified,
    }


@app.command()
def add(
    ctx: typer.Context,
    handle: Annotated[str, typer.Argument(help="Their handle (e-mail or +phone).")],
    nickname: Annotated[
        str | None, typer.Option("--nickname", metavar="NAME", help="Your own name for them (shown before theirs).")
    ] = None,
) -> None:
    """Add someone to your contacts (looked up at the relay and pinned). With the default
    share policy, your name and photo go to them with your next message."""
    state: State = ctx.obj
    with state.client() as client:
        client.contacts_add(handle, nickname or "")
        row = next(c for c in client.contacts() if c.handle == handle or c.handle == _canonical(handle))
    if state.out.json:
        state.out.record(_record(row))
    else:
        state.out.info(f"added {row.handle} to your contacts")


@app.command()
def remove(
    ctx: typer.Context,
    handle: Annotated[str, typer.Argument(help="Their handle.")],
    yes: Yes = False,
) -> None:
    """Take someone out of your contacts (and forget your nickname for them). Your
    conversation stays. They keep the profile key they already have: to stop them seeing
    later changes of your name and photo, run imsg profile share off (it rotates the key).
    Asks first (--yes: do not)."""
    state: State = ctx.obj
    with state.client() as client:
        canonical = _canonical(handle)
        if any(c.handle == canonical and c.in_contacts for c in client.contacts()):  # else the library's error
            confirm(f"remove {one_line(canonical)} from your contacts (and your nickname for them)?", yes)
        contact = client.contacts_remove(handle)
    if state.out.json:
        state.out.record({"handle": contact.handle, "in_contacts": False})
    else:
        state.out.info(f"removed {contact.handle} from your contacts")


def _canonical(handle: str) -> str:
    from imsg.handles import canonical_handle

    return canonical_handle(handle)


@app.command()
def photo(
    ctx: typer.Context,
    handle: Annotated[str, typer.Argument(help="The contact whose photo to save.")],
    out_file: Annotated[str, typer.Option("--out", metavar="FILE", help="Where to write it (never overwritten).")],
) -> None:
    """Save the photo a contact shares with you, as they set it (JPEG, PNG, WebP or HEIC;
    checked by its first bytes, never decoded or shown by imsg)."""
    state: State = ctx.obj
    with state.client() as client:
        saved = client.contact_photo(handle, out_file)
    if state.out.json:
        state.out.record(
            {"handle": _canonical(handle), "path": str(saved.path), "type": saved.type, "size": saved.size}
        )
    else:
        state.out.line(one_line(str(saved.path)))
        state.out.info(f"{saved.type}, {human_size(saved.size)}")
