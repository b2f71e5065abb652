"""The question before a destructive action, and `--yes` for scripts.

At a terminal (stdin and stderr both are one) the person is asked on stderr, default no;
a "no" changes nothing and exits 130 like any abort. Without a terminal and without --yes
the command refuses with a usage error (exit 2, JSON code `confirmation_required`) before
changing anything: a script must say it means it."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from imsg.errors import UsageError

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")]


class ConfirmationRequired(UsageError):
    """a destructive action needs confirmation"""

    code = "confirmation_required"


def at_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty() and sys.stderr.isatty()


def confirm(question: str, yes: bool) -> None:
    """Return if the action may go ahead; raise otherwise (see the module doc)."""
    if yes:
        return
    if not at_terminal():
        raise ConfirmationRequired(
            f"not confirmed: {question}",
            hint="add --yes to confirm from a script (or run it at a terminal to be asked)",
        )
    if not typer.confirm(question, default=False, err=True):
        raise typer.Abort()
