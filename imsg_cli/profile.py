"""`imsg profile share`: who gets your name and photo; and the question the `ask` policy
puts before a first message to someone."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from imsg_cli.confirm import Yes, confirm
from imsg_cli.output import human_size
from imsg_cli.render import one_line
from imsg_cli.state import State

if TYPE_CHECKING:
    from imsg.client import Client
    from imsg.client.results import OwnProfile

app = typer.Typer(no_args_is_help=True, help="Your name and photo, and whom they are shared with.")


def share_answer(client: Client, to: str, given: str | None) -> str | None:
    """The answer for sharing our profile with `to`: the one given on the command line;
    else, when the `ask` policy needs one and a person is at the terminal, theirs; else
    None (a script without --share-profile shares nothing new)."""
    if given is not None:
        if given not in ("yes", "no"):
            from imsg.errors import UsageError

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
    yes: Yes = False,
) -> None:
    """Choose who gets your name and photo (with your next message to them).

    contacts: everyone in your contacts (imsg contacts add). ask: you are asked before a
    first message to someone (scripts: imsg send --share-profile yes|no). off: nobody from
    now on; your profile key is rotated and the relay's copy re-encrypted, so people who had
    it stop seeing updates. What they already saved stays on their devices. Off asks
    first (--yes: do not)."""
    state: State = ctx.obj
    with state.client() as client:
        if policy == "off" and client.share_policy() != "off":
            confirm("stop sharing your name and photo, and rotate your profile key?", yes)
        client.set_share_policy(policy)
    if state.out.json:
        state.out.record({"share": policy})
    else:
        state.out.info(f"sharing your name and photo: {policy}")


@app.command("set")
def set_(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="Your name, as people you share with see it.")
    ] = None,
    photo: Annotated[
        str | None,
        typer.Option("--photo", metavar="FILE", help="A JPEG, PNG, WebP or HEIC image of at most 512 KiB."),
    ] = None,
    no_photo: Annotated[bool, typer.Option("--no-photo", help="Remove your photo.")] = False,
) -> None:
    """Set your name and/or photo. They are encrypted under your profile key before they
    reach the relay, and go to the people you share with (imsg profile share) with your
    next message to each of them."""
    from imsg.errors import UsageError

    if name is None and photo is None and not no_photo:
        raise UsageError("nothing to change", hint="give --name, --photo FILE or --no-photo")
    state: State = ctx.obj
    with state.client() as client:
        shown = client.profile_set(name, photo, remove_photo=no_photo)
    _show(state, shown)


@app.command()
def show(ctx: typer.Context) -> None:
    """Show your name, photo (type and size; never displayed), revision, share policy and
    who holds your current profile key."""
    state: State = ctx.obj
    with state.client() as client:
        shown = client.profile_show()
    _show(state, shown)


def _show(state: State, p: OwnProfile) -> None:
    out = state.out
    if out.json:
        out.record(
            {
                "name": p.name or None,
                "photo": {"type": p.photo_type, "size": p.photo_size} if p.photo_size else None,
                "revision": p.revision,
                "share": p.share,
                "published": p.published,
                "shared_with": list(p.shared_with),
            }
        )
        return
    # The name may come from another of our devices or a backup; handles from contacts.
    out.line(f"name:     {one_line(p.name) if p.name else '(none)'}")
    out.line(f"photo:    {f'{p.photo_type}, {human_size(p.photo_size)}' if p.photo_size else '(none)'}")
    out.line(f"sharing:  {p.share}")
    out.line(f"revision: {p.revision}" + ("" if p.published or not p.revision else " (not yet on the relay)"))
    out.line(f"shared with: {', '.join(map(one_line, p.shared_with)) if p.shared_with else 'nobody yet'}")
