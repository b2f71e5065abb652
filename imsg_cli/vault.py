"""`imsg passcode set|change|remove`, `imsg lock`, `imsg unlock`: encryption at rest.

The design (imsg/store/vault.py, imsg/store/vault_agent.py, docs/STORAGE.md): with a passcode,
the whole home is encrypted under a random storage key, wrapped by a key derived from the
passcode with Argon2id. `imsg unlock --for 15m` hands the storage key to a small agent
process of this user (memory only, a 0600 socket in the runtime dir), which exits at the
deadline or on `imsg lock`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated

import typer

from imsg_cli.state import State

passcode_app = typer.Typer(
    help="Encrypt this home at rest under a passcode (Argon2id + SQLCipher); see docs/STORAGE.md. "
    "Scripts give the passcode with IMSG_PASSCODE or --passcode-file, or opt in to the OS keyring.",
    no_args_is_help=True,
)

NewPasscodeFile = Annotated[
    str | None,
    typer.Option(
        "--new-passcode-file",
        metavar="PATH",
        help="Read the new passcode from the first line of PATH (or set IMSG_NEW_PASSCODE).",
    ),
]

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_UNLOCK_S = 30 * 86400


def parse_duration(text: str) -> int:
    """'90s', '15m', '8h', '7d' -> seconds (at most 30 days)."""
    import re

    from imsg.errors import UsageError

    m = re.fullmatch(r"(\d{1,6})([smhd])", text.strip().lower())
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_UNLOCK_S:
        raise UsageError(f"not a duration: {text!r}", hint="e.g. 90s, 15m, 8h, 7d (at most 30d)")
    return seconds


def _new_passcode(state: State, path: str | None, *, allow_current: bool) -> str:
    """The new passcode: --new-passcode-file, IMSG_NEW_PASSCODE, (for `set`, where there is no
    current one: IMSG_PASSCODE / --passcode-file), else asked twice on the terminal."""
    from imsg.errors import UsageError
    from imsg.store import vault

    if path:
        passcode = vault.read_passcode_file(path)
    elif os.environ.get("IMSG_NEW_PASSCODE"):
        passcode = os.environ["IMSG_NEW_PASSCODE"]
    elif allow_current and os.environ.get("IMSG_PASSCODE"):
        passcode = os.environ["IMSG_PASSCODE"]
    elif allow_current and state.passcode_file:
        passcode = vault.read_passcode_file(state.passcode_file)
    else:
        keys = vault.KeySource.from_environment()
        if keys.prompt is None:
            raise UsageError(
                "no new passcode given", hint="type it on a terminal, or use IMSG_NEW_PASSCODE / --new-passcode-file"
            )
        passcode = _first_new_passcode(state, keys.prompt)
        if keys.prompt("new passcode again: ") != passcode:
            raise UsageError("the two passcodes differ; nothing was changed")
    return vault.check_new_passcode(passcode)


def _first_new_passcode(state: State, prompt: Callable[[str], str], tries: int = 3) -> str:
    """The new passcode typed once, checked (length) before it is asked again."""
    from imsg.errors import UsageError
    from imsg.store import vault

    for attempt in range(tries):
        passcode = prompt("new passcode: ")
        try:
            return vault.check_new_passcode(passcode)
        except UsageError as exc:
            if attempt == tries - 1:
                raise
            state.out.error(exc.code, str(exc), "type a longer one")
    raise AssertionError("unreachable")


@passcode_app.command("set")
def set_(
    ctx: typer.Context,
    new_passcode_file: NewPasscodeFile = None,
    keyring: Annotated[
        bool,
        typer.Option(
            "--keyring",
            help="Also keep the storage key in the OS keyring, so commands run by this user "
            "need no passcode (anyone who can read your keyring can then open the home).",
        ),
    ] = False,
) -> None:
    """Encrypt this home under a new passcode (at least 4 characters; longer is much
    stronger against someone who copies the disk)."""
    from imsg.store import vault

    state: State = ctx.obj
    home = state.home_path()
    vault.refuse_if_set(home)  # before asking for a new one
    passcode = _new_passcode(state, new_passcode_file, allow_current=True)
    vault.set_passcode(home, passcode, keyring=keyring)
    _done(state, "passcode set: this home is encrypted at rest", passcode=True, keyring=keyring)


@passcode_app.command("change")
def change(
    ctx: typer.Context,
    new_passcode_file: NewPasscodeFile = None,
    keyring: Annotated[
        bool | None,
        typer.Option(
            "--keyring/--no-keyring",
            help="Keep (or stop keeping) the storage key in the OS keyring; default: as before.",
        ),
    ] = None,
) -> None:
    """Change the passcode (the current one is asked for even while unlocked): the home is
    re-encrypted under a new storage key, so an old copy of the key file with the old
    passcode opens nothing current."""
    from imsg.store import vault

    state: State = ctx.obj
    home = state.home_path()
    old_key = vault.current_key(home, state.keys().passcode_only())  # checked before asking for the new one
    passcode = _new_passcode(state, new_passcode_file, allow_current=False)
    vault.change_passcode(home, old_key, passcode, keyring=keyring)
    keyfile = vault.read_keyfile(home)
    _done(state, "passcode changed", passcode=True, keyring=keyfile is not None and keyfile.keyring)


@passcode_app.command("remove")
def remove(ctx: typer.Context) -> None:
    """Remove the passcode (asked for even while unlocked): the home is decrypted back to a
    plain SQLite file."""
    from imsg.store import vault

    state: State = ctx.obj
    home = state.home_path()
    vault.remove_passcode(home, vault.current_key(home, state.keys().passcode_only()))
    _done(state, "passcode removed: this home is no longer encrypted at rest", passcode=False, keyring=False)


def _done(state: State, message: str, **record: object) -> None:
    if state.out.json:
        state.out.record(record)
    else:
        state.out.info(message)


def lock(ctx: typer.Context) -> None:
    """Lock this home now: end the unlock agent, so every command needs the passcode again.
    (A running `imsg watch` that got its key from the agent stops too.)"""
    from imsg.errors import LocalStateError
    from imsg.store import vault, vault_agent

    state: State = ctx.obj
    home = state.home_path()
    was_unlocked = vault_agent.stop(home)
    if not vault.has_passcode(home) and not was_unlocked:
        raise LocalStateError("this home has no passcode", hint="set one with: imsg passcode set")
    if state.out.json:
        state.out.record({"locked": True, "was_unlocked": was_unlocked})
    else:
        state.out.info("locked" if was_unlocked else "already locked")


def unlock(
    ctx: typer.Context,
    for_: Annotated[
        str,
        typer.Option(
            "--for", metavar="DURATION", help="How long to stay unlocked: e.g. 90s, 15m, 8h, 7d (at most 30d)."
        ),
    ] = "15m",
) -> None:
    """Unlock this home for a while (default 15 minutes) so commands need no passcode.
    The storage key is kept only in the memory of a small agent process of yours (reached
    over a 0600 socket in your runtime dir); it exits at the deadline, on `imsg lock`, or
    at reboot. Nothing readable is written to disk."""
    import time

    from imsg.store import vault, vault_agent
    from imsg_cli.output import iso, local_time

    state: State = ctx.obj
    seconds = parse_duration(for_)
    home = state.home_path()
    key = vault.current_key(home, state.keys().passcode_only())
    until = int((time.time() + seconds) * 1000)
    vault_agent.start(home, key, until)
    if state.out.json:
        state.out.record({"unlocked_until": iso(until)})
    else:
        state.out.info(f"unlocked until {local_time(until)}; lock now with: imsg lock")
