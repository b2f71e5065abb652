"""`imsg send`, `imsg receive`, `imsg watch`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from imsg_cli.names import names
from imsg_cli.output import print_message
from imsg_cli.render import one_line
from imsg_cli.state import State

if TYPE_CHECKING:
    from collections.abc import Iterable

    from imsg.client import Client
    from imsg.client.results import Message


def send(
    ctx: typer.Context,
    to: Annotated[str, typer.Argument(help="Recipient handle (e-mail or +phone), or a contact's nickname.")],
    text: Annotated[str | None, typer.Argument(help="Message text; read from stdin when omitted or '-'.")] = None,
    attach: Annotated[
        list[str] | None,
        typer.Option("--attach", metavar="FILE", help="Attach a file (repeatable); encrypted as it uploads."),
    ] = None,
    draft: Annotated[
        list[str] | None,
        typer.Option(
            "--draft", metavar="ID", help="Send an attachment uploaded earlier with imsg attach (repeatable)."
        ),
    ] = None,
    on_key_change: Annotated[
        str,
        typer.Option(
            "--on-key-change",
            metavar="hold|accept",
            help="If the recipient's safety number changed: hold the message (default, exit 6) or accept "
            "the new key and send.",
        ),
    ] = "hold",
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="HANDLE",
            help="Send from this handle of yours, this once (default: the start-from handle, see imsg reachable).",
        ),
    ] = None,
    share_profile: Annotated[
        str | None,
        typer.Option(
            "--share-profile",
            metavar="yes|no",
            help="Share your name and photo with this person (remembered for them). With the ask "
            "policy and no terminal, nothing is shared unless this says yes.",
        ),
    ] = None,
) -> None:
    """Send an end-to-end encrypted message. Prints the message id."""
    from imsg.errors import UsageError

    state: State = ctx.obj
    files = attach or []
    drafts = draft or []
    if text == "-" or (text is None and not files and not drafts):
        if sys.stdin is None or (sys.stdin.isatty() and text is None):
            raise UsageError("no message text", hint="give TEXT, or pipe it on stdin with '-'")
        text = sys.stdin.read()
        if text.endswith("\n"):
            text = text[:-1]
    text = text or ""
    if not text.strip() and not files and not drafts:
        raise UsageError("empty message" if not text else "empty message: only whitespace")
    _check_length(text)
    from imsg_cli.names import resolve
    from imsg_cli.output import Transfers
    from imsg_cli.profile import share_answer

    with state.client() as client, Transfers(state.out) as bars:
        to = resolve(client, to)  # a handle, or the nickname of a contact
        share_profile = share_answer(client, to, share_profile)
        try:
            sent = client.send(
                to,
                text,
                on_key_change=on_key_change,
                attachments=files,
                drafts=drafts,
                progress=bars.callback,
                share_profile=share_profile,
                from_=from_,
            )
        except UsageError as exc:
            if str(exc) == "message too long":  # with attachments and profile, the content outgrew its cap
                raise _too_long(
                    "encrypted with its attachments and profile, it exceeds the 64 KiB a message holds"
                ) from None
            raise
        _report_problems(state, client)  # e.g. an earlier queued message the relay refused
        sender = _sent_from(client, sent.to, sent.id) if state.out.json else None
    out = state.out
    if out.json:
        from imsg_cli.output import iso

        record = {
            "id": sent.id,
            "from": sender,
            "to": sent.to,
            "sent_at": iso(sent.sent_at),
            "devices": sent.devices,
            "sealed": sent.sealed,
        }
        if not sent.sealed and sent.sealed_reason:  # a visible fall-back, never a silent one
            record["sealed_reason"] = sent.sealed_reason
        out.record(record)
    else:
        out.line(sent.id)
        if sent.sealed:
            out.info(f"sent to {sent.to} (sealed sender)")
        elif sent.sealed_reason:  # the relay was told who sent it: say so, and why
            out.info(f"sent to {sent.to} (identified: {sent.sealed_reason.replace('_', ' ')})")
        else:
            out.info(f"sent to {sent.to}")


def _too_long(detail: str) -> Exception:
    from imsg.errors import UsageError
    from imsg.protocol.content import MAX_TEXT_LEN

    return UsageError(
        f"message too long: {detail}; the limit is {MAX_TEXT_LEN:,} characters (about {MAX_TEXT_LEN // 1024} KiB)",
        hint="send long text as a file: imsg send TO --attach FILE",
    )


def _check_length(text: str) -> None:
    """Refuse before anything is opened what a recipient would refuse as too long."""
    from imsg.protocol.content import MAX_TEXT_LEN

    if len(text) > MAX_TEXT_LEN:
        raise _too_long(f"{len(text):,} characters")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_LEN:  # the encrypted content has room for about this many bytes
        raise _too_long(f"{size:,} bytes of UTF-8")


def _sent_from(client: Client, to: str, message_id: str) -> str | None:
    """The handle a message just sent went out from, as this home stored it (the newest
    few messages of the conversation hold it)."""
    from imsg.errors import ImsgError

    try:
        return next((m.sender for m in client.history(to, 5) if m.id == message_id), None)
    except ImsgError:  # the message is sent: a history that cannot be read must not fail it
        return None


def _report_problems(state: State, client: Client) -> int:
    """Print dropped envelopes; return how many were security rejections."""
    rejected = 0
    for p in client.problems:
        if p.code == "rejected":
            rejected += 1
            state.out.error(
                "rejected_message", f"rejected message {p.message_id}: {p.message}", message_id=p.message_id
            )
        # profile_rejected: a tampered profile; discovery_refused: a relay caught cheating
        # in a background contact check (issue 12)
        elif p.code in ("identity_changed", "profile_rejected", "discovery_refused"):
            rejected += 1
            state.out.error(p.code, p.message, message_id=p.message_id)
        elif p.code in (
            "devices_changed",
            "backup_failed",
            "sealed_only_waiting",
            "unverified_handle",
            "unverified_from",
            "from_unchecked",
            "from_checked",
            "recheck_failed",
        ):  # notes, not dropped messages
            state.out.warning(p.code, p.message)
        elif p.code == "duplicate":  # a relay's redelivery (or a receive beside a watch): harmless
            state.out.warning(
                p.code, f"already received: redelivered copy of {p.message_id} ignored", message_id=p.message_id
            )
        else:
            state.out.warning(p.code, f"ignored message {p.message_id}: {p.message}", message_id=p.message_id)
    client.problems.clear()
    return rejected


def receive(
    ctx: typer.Context,
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, max=3600, metavar="SECONDS", help="Wait up to SECONDS for a first message."),
    ] = 0,
    download: Annotated[
        str | None,
        typer.Option(
            "--download", metavar="DIR", help="Also save every attachment into DIR (checked, then decrypted)."
        ),
    ] = None,
) -> None:
    """Fetch, decrypt, store and print waiting messages (oldest first)."""
    import time

    from imsg.errors import SecurityError

    state: State = ctx.obj
    deadline = time.monotonic() + wait
    with state.client() as client:
        # mark=False: a message counts as handed out only once its line is written and
        # flushed (a reader such as `head -1` that goes away must not take the rest along)
        messages = client.receive(wait=min(wait, 60), mark=False)
        while not messages and time.monotonic() < deadline:
            messages = client.receive(wait=min(60, max(1, deadline - time.monotonic())), mark=False)
        if download:
            messages = _download_all(state, client, messages, download)
        shown = {} if state.out.json or not messages else names(client)
        for m in messages:
            print_message(state.out, m, shown)
            client.mark_shown(m.id)
        rejected = _report_problems(state, client)
    if rejected:
        raise SecurityError(
            f"{rejected} message(s) failed authentication and were dropped",
            hint="the relay or a sender sent tampered or forged data",
        )


def watch(ctx: typer.Context) -> None:
    """Print messages as they arrive, until interrupted (the relay pushes; no polling)."""
    import time

    from imsg.errors import RelayUnavailableError

    state: State = ctx.obj
    state.out.info("watching for messages; Ctrl-C to stop")
    backoff = _BACKOFF_FIRST
    with state.client() as client:
        while True:
            try:
                # mark=False: each message counts as handed out once its line is written
                for m in client.watch(mark=False):
                    print_message(state.out, m, None if state.out.json else names(client))  # names may change
                    client.mark_shown(m.id)
                    _report_problems(state, client)
                    backoff = _BACKOFF_FIRST
            except RelayUnavailableError as exc:  # a relay restart or outage: wait, then reconnect
                state.out.warning("relay_unavailable", f"{exc}; reconnecting in {backoff:g} s")
                time.sleep(backoff)  # a real back-off between reconnects, not a test's wait
                backoff = min(backoff * 2, _BACKOFF_MAX)


_BACKOFF_FIRST, _BACKOFF_MAX = 1.0, 30.0  # seconds between watch's reconnect attempts


def _download_all(state: State, client: Client, messages: Iterable[Message], directory: str) -> list[Message]:
    """Save the attachments of `messages`; return the messages with their saved paths."""
    from imsg_cli.output import Transfers

    out = []
    with Transfers(state.out) as bars:
        for m in messages:
            if m.attachments:
                client.save_attachments(m.id, directory, progress=bars.callback)
                m = client.with_saved_paths(m)
            out.append(m)
    return out


def attach(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The file to upload now (encrypted) and send later.")],
) -> None:
    """Upload an attachment now, while you write; prints a draft id for `send --draft`.
    Drafts never sent are purged by the relay after 30 days."""
    from imsg_cli.output import Transfers, iso

    state: State = ctx.obj
    with state.client() as client, Transfers(state.out) as bars:
        d = client.attach(file, progress=bars.callback)
    if state.out.json:
        state.out.record({"id": d.id, "name": d.name, "size": d.size, "type": d.type, "expires_at": iso(d.expires_at)})
    else:
        state.out.line(d.id)
        state.out.info(f"uploaded {d.name}; send it with: imsg send TO --draft {d.id}")


attachment_app = typer.Typer(help="Save the attachments of received messages.", no_args_is_help=True)


@attachment_app.command("save")
def attachment_save(
    ctx: typer.Context,
    message_id: Annotated[str, typer.Argument(help="The message's id (see receive / history).")],
    out_dir: Annotated[str, typer.Option("--out", metavar="DIR", help="Directory to write into.")] = ".",
) -> None:
    """Download a message's attachments: length and digest are checked before decrypting,
    files are written 0600 under their (sanitised) names, never opened or decoded."""
    from imsg_cli.output import Transfers

    state: State = ctx.obj
    with state.client() as client, Transfers(state.out) as bars:
        paths = client.save_attachments(message_id, out_dir, progress=bars.callback)
    for path in paths:
        if state.out.json:
            state.out.record({"message_id": message_id, "path": str(path)})
        else:
            state.out.line(one_line(str(path)))
