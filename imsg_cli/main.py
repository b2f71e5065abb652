"""Entry point of `imsg`: global options, the command table, and the one dispatcher that
turns errors into output and exit codes."""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer
from typer import TyperException

from imsg_cli import (
    account,
    backup,
    contacts,
    devices,
    history,
    messages,
    privacy,
    profile,
    reachable,
    retention,
    sealed,
    trust,
    vault,
)
from imsg_cli.output import Output
from imsg_cli.state import State


def _usage_metavar(self: typer.core.TyperArgument, ctx: object, *, usage: bool = False) -> str:
    """Arguments in usage lines as people write them (`imsg send [OPTIONS] TO [TEXT]`),
    not typer's `{to} [text]`: the metavar, else the name in capitals."""
    var = self.metavar or (self.name or "").upper()
    if self.nargs != 1 and not var.endswith("..."):
        var += "..."
    return f"[{var}]" if usage and not self.required and not var.startswith("[") else var


typer.core.TyperArgument.make_metavar = _usage_metavar  # type: ignore[method-assign]

app = typer.Typer(
    name="imsg",
    help="End-to-end encrypted messages from the terminal. The options below may also come "
    "after the command (imsg whoami --json).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help text: importing rich costs start-up time
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from imsg import __version__

        print(f"imsg {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    home: Annotated[
        str | None,
        typer.Option(
            "--home",
            envvar="IMSG_HOME",
            metavar="DIR",
            help="Account home directory. Default: the platform's data directory, "
            "~/.local/share/imsg on Linux ($XDG_DATA_HOME/imsg), "
            "~/Library/Application Support/imsg on macOS.",
        ),
    ] = None,
    relay: Annotated[
        str | None,
        typer.Option(
            "--relay", envvar="IMSG_RELAY", metavar="URL", help="Relay URL (needed by init; then remembered)."
        ),
    ] = None,
    proxy: Annotated[
        str | None,
        typer.Option(
            "--proxy",
            envvar="IMSG_PROXY",
            metavar="URL",
            help="SOCKS5 proxy (socks5://HOST:PORT, e.g. Tor) for the requests sent without a credential "
            "(lookups of recipients, sealed sends, downloads), each under its own proxy username.",
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output (NDJSON).")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plain http to a non-loopback relay.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    passcode_file: Annotated[
        str | None,
        typer.Option(
            "--passcode-file",
            metavar="PATH",
            help="Read a locked home's passcode from the first line of PATH (or set IMSG_PASSCODE).",
        ),
    ] = None,
) -> None:
    ctx.obj = State(home=home, relay=relay, json=json_, insecure=insecure, passcode_file=passcode_file, proxy=proxy)


app.command()(account.init)
app.command()(account.whoami)
app.command()(messages.send)
app.command()(messages.receive)
app.command()(messages.watch)
app.command()(messages.attach)
app.add_typer(messages.attachment_app, name="attachment")
app.command()(history.chats)
app.command()(history.history)
app.command()(history.delete)
app.add_typer(contacts.app, name="contacts")
app.command()(trust.verify)
app.command()(trust.trust)
app.add_typer(devices.app, name="device")
app.add_typer(reachable.app, name="reachable")
app.command()(reachable.lookup)
app.add_typer(profile.app, name="profile")
app.add_typer(retention.app, name="retention")
app.add_typer(vault.passcode_app, name="passcode")
app.command()(vault.lock)
app.command()(vault.unlock)
app.add_typer(backup.app, name="backup")
app.add_typer(privacy.app, name="privacy")
app.add_typer(sealed.app, name="sealed")


# The global options, which may also come after the subcommand (`imsg whoami --json`):
# flags, and options that take a value.
_GLOBAL_FLAGS = frozenset({"--json", "--insecure", "--version"})
_GLOBAL_VALUED = frozenset({"--home", "--relay", "--passcode-file"})


def hoist_globals(args: list[str]) -> list[str]:
    """`args` with every global option moved before the subcommand, in order, so that
    `imsg send BOB hi --json --home H` means `imsg --json --home H send BOB hi`. Nothing
    after `--` moves (so `imsg send BOB -- --json` sends the text "--json")."""
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        name = arg.split("=", 1)[0]
        if arg in _GLOBAL_FLAGS or (name in _GLOBAL_VALUED and "=" in arg):
            hoisted.append(arg)
        elif arg in _GLOBAL_VALUED and i + 1 < len(args):
            hoisted += args[i : i + 2]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return hoisted + rest


def main(argv: list[str] | None = None) -> int:
    args = hoist_globals(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in args
    out = Output(json_mode)
    try:
        rv = app(args=args, prog_name="imsg", standalone_mode=False)
        # Without standalone mode, typer (>= 0.16) turns Ctrl-C into Exit(130), and an Exit
        # raised anywhere, into a returned exit code: pass it on instead of exiting 0.
        if isinstance(rv, int) and not isinstance(rv, bool):
            if rv == 130:
                out.info("interrupted")
            return rv
        return 0
    except KeyboardInterrupt:
        out.info("interrupted")
        return 130
    except BrokenPipeError:
        return _pipe_closed()
    except SystemExit as exc:  # typer turns EPIPE into sys.exit(1), even without standalone mode
        if isinstance(exc.__context__, OSError) and exc.__context__.errno == errno.EPIPE:
            return _pipe_closed()
        raise
    except Exception as exc:  # the one place errors become exit codes
        return _report(out, exc)


def _report(out: Output, exc: BaseException) -> int:
    from imsg.errors import ImsgError

    if isinstance(exc, ImsgError):
        details = {k: v for k, v in exc.details.items() if v is not None}
        out.error(exc.code, str(exc), exc.hint, **details)
        return exc.exit_code
    if isinstance(exc, typer.Exit):
        return exc.exit_code
    if isinstance(exc, typer.Abort):
        out.info("aborted")
        return 130
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `imsg` or `imsg device`: help, on stdout
        ctx = exc.ctx  # type: ignore[attr-defined]
        sys.stdout.write(ctx.get_help() + "\n")
        return 0 if ctx.parent is None else 2  # a group without its subcommand is incomplete
    if isinstance(exc, TyperException):  # typer's own (vendored click) usage errors
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        hint = f"see: {ctx.command_path} --help" if ctx is not None else None
        out.error("usage", message, hint)
        return 2
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == errno.EPIPE:  # EPIPE: reader went away
        return _pipe_closed()
    if os.environ.get("IMSG_DEBUG") == "1":
        import traceback

        traceback.print_exception(exc)
    out.error(
        "bug",
        f"unexpected error: {type(exc).__name__}: {exc}",
        "rerun with IMSG_DEBUG=1 for a traceback, and please report it",
    )
    return 1


def _pipe_closed() -> int:
    """The reader of stdout went away (`imsg --json receive | head -1`): exit 0 quietly,
    as `head` expects. Nothing unwritten counts as handed out (receive and watch mark a
    message shown only after its line is flushed). stdout is pointed at /dev/null so
    the interpreter's final flush cannot raise again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no usable stdout at all: nothing more to write anyway
        pass
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
