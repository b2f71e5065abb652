"""CLI conventions (issue 18 item 8) through the real `imsg` command: global options after
the subcommand, piped tables never cut, bare `imsg` prints help, `imsg-relay --version`,
default paths stated, `delete` of an unknown id, confirmation before destructive actions
(and --yes for scripts), local times for people, shell completion."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from support.cli import IMSG, assert_json_error, assert_ok, json_lines
from support.cli import clean_env as _env
from support.cli import run_imsg as imsg
from support.tty import on_a_terminal

ROOT = Path(__file__).resolve().parents[2]
LONG = "carol.has.a.rather.long.address.for.tables@example-mail-provider.com"


@pytest.fixture(scope="module")
def homes(tmp_path_factory, module_relay_proc):
    base = tmp_path_factory.mktemp("homes")
    alice, carol = base / "alice", base / "carol"
    url = module_relay_proc.url
    assert_ok(imsg(alice, "init", "alice@example.com", relay=url, json_mode=True))
    assert_ok(imsg(carol, "init", LONG, relay=url, json_mode=True))
    return {"alice": alice, "carol": carol, "url": url}


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`imsg ARGS` exactly as given (no options added in front)."""
    return subprocess.run(
        IMSG + list(args),
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _env(),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def test_global_options_after_the_subcommand(homes):
    [doc] = assert_ok(run("whoami", "--json", "--home", str(homes["alice"])))
    assert doc["handle"] == "alice@example.com"
    [doc] = assert_ok(run("whoami", f"--home={homes['alice']}", "--json"))
    assert doc["handle"] == "alice@example.com"
    # After `--` nothing moves: the text "--json" is sent as it is.
    [sent] = assert_ok(run("--home", str(homes["alice"]), "send", LONG, "--json", "--", "--json"))
    rows = assert_ok(run("receive", "--home", str(homes["carol"]), "--json", "--wait", "5"))
    assert [m["text"] for m in rows] == ["--json"] and rows[0]["id"] == sent["id"]
    r = run("--home", str(homes["alice"]), "history", LONG, "--json")
    assert json_lines(r.stdout)[-1]["text"] == "--json"


def test_piped_tables_are_not_cut_at_80_columns(homes):
    assert_ok(imsg(homes["alice"], "send", LONG, "a message long enough to need a preview cut", json_mode=True))
    r = imsg(homes["alice"], "chats", env=_env(COLUMNS="80"))
    assert r.returncode == 0, r.stderr
    assert LONG in r.stdout  # `imsg chats | grep carol…` finds it
    assert max(len(line) for line in r.stdout.splitlines()) > 80
    r = imsg(homes["alice"], "contacts", env=_env(COLUMNS="80"))
    assert r.returncode == 0 and LONG in r.stdout


def test_bare_imsg_prints_help_on_stdout():
    r = run()
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("Usage: imsg") and "error" not in r.stdout
    r = run("device")  # a group without its subcommand: its help, exit 2 (incomplete), still no error:
    assert r.returncode == 2 and r.stderr == "" and r.stdout.startswith("Usage: imsg device")


def test_help_states_default_paths_and_plain_metavars():
    r = run("--help")
    assert r.returncode == 0
    assert "~/.local/share/imsg" in r.stdout
    assert "[env: IMSG_HOME]" not in r.stdout  # typer's own [env var: ...] only
    assert r.stdout.count("IMSG_HOME") == 1
    r = run("send", "--help")
    assert "Usage: imsg send [OPTIONS] TO [TEXT]" in r.stdout
    r = run("receive", "--help")
    assert "--wait SECONDS" in r.stdout and "<float range>" not in r.stdout
    readme = (ROOT / "README.md").read_text()
    assert "~/.local/share/imsg" in readme and "./imsg-relay-data" in readme


def test_imsg_relay_version():
    exe = Path(sys.executable).parent / "imsg-relay"
    if not exe.exists():
        pytest.skip("no imsg-relay entry point next to this python")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0 and r.stdout.startswith("imsg-relay 0.")


def test_shell_completion_is_available():
    r = run("--show-completion", "bash")
    assert r.returncode == 0 and "_IMSG_COMPLETE" in r.stdout


def test_delete_unknown_id_is_an_error(homes):
    [sent] = assert_ok(imsg(homes["alice"], "send", LONG, "to delete", json_mode=True))
    unknown = "0" * 32
    doc = assert_json_error(imsg(homes["alice"], "delete", unknown, "--yes", json_mode=True), 3, "unknown_message")
    assert unknown in doc["message"]
    # Like rm: the known one goes, the unknown one is reported, exit 3.
    r = imsg(homes["alice"], "delete", sent["id"], unknown, "--yes", json_mode=True)
    assert r.returncode == 3 and json_lines(r.stdout) == [{"deleted": 1}]
    assert json_lines(r.stderr)[-1]["error"] == "unknown_message"
    texts = [m["text"] for m in assert_ok(imsg(homes["alice"], "history", LONG, json_mode=True))]
    assert "to delete" not in texts


@pytest.mark.parametrize(
    "args",
    [
        ["delete", "MID"],
        ["retention", "set", "30d"],
        ["backup", "off"],
        ["profile", "share", "off"],
        ["contacts", "remove", "bob@example.com"],
    ],
)
def test_destructive_commands_refuse_without_yes_off_a_terminal(homes, args):
    alice = homes["alice"]
    [sent] = assert_ok(imsg(alice, "send", LONG, "keep me", json_mode=True))
    if args[0] == "contacts":
        args = ["contacts", "remove", LONG]
        assert_ok(imsg(alice, "contacts", "add", LONG, json_mode=True))
    args = [sent["id"] if a == "MID" else a for a in args]
    doc = assert_json_error(imsg(alice, *args, json_mode=True), 2, "confirmation_required")
    assert "--yes" in doc["hint"]
    r = imsg(alice, *args)
    assert r.returncode == 2 and "error: not confirmed" in r.stderr and "--yes" in r.stderr
    # Nothing changed.
    assert "keep me" in [m["text"] for m in assert_ok(imsg(alice, "history", LONG, json_mode=True))]
    assert assert_ok(imsg(alice, "retention", "show", json_mode=True)) == [{"retention": "forever"}]
    if args[0] == "contacts":
        assert any(c["in_contacts"] for c in assert_ok(imsg(alice, "contacts", json_mode=True)))
        assert_ok(imsg(alice, *args, "--yes", json_mode=True))


def test_confirmation_at_a_terminal(homes):
    alice = homes["alice"]
    [sent] = assert_ok(imsg(alice, "send", LONG, "ask me first", json_mode=True))
    cmd = [*IMSG, "--home", str(alice), "delete", sent["id"]]
    code, out = on_a_terminal(cmd, _env(), ["n"])
    assert code == 130 and "delete 1 message(s)" in out and "[y/N]" in out, out
    assert "ask me first" in [m["text"] for m in assert_ok(imsg(alice, "history", LONG, json_mode=True))]
    code, out = on_a_terminal(cmd, _env(), ["y"])
    assert code == 0 and "deleted 1 message(s)" in out, out
    assert "ask me first" not in [m["text"] for m in assert_ok(imsg(alice, "history", LONG, json_mode=True))]
    # A longer retention asks nothing.
    code, out = on_a_terminal([*IMSG, "--home", str(alice), "retention", "set", "forever"], _env(), [])
    assert code == 0 and "[y/N]" not in out, out


def test_times_for_people_are_local(homes):
    [sent] = assert_ok(imsg(homes["alice"], "send", LONG, "what time is it", json_mode=True))
    utc = datetime.fromisoformat(sent["sent_at"])
    assert utc.utcoffset().total_seconds() == 0  # JSON: ISO 8601 UTC
    from zoneinfo import ZoneInfo

    local = utc.astimezone(ZoneInfo("Asia/Kathmandu")).strftime("%Y-%m-%d %H:%M")  # UTC+05:45
    r = imsg(homes["alice"], "history", LONG, "-n", "1", env=_env(TZ="Asia/Kathmandu"))
    assert r.returncode == 0 and r.stdout.startswith(f"[{local}]"), (local, r.stdout)
