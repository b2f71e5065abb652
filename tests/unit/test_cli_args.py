"""imsg_cli.main.hoist_globals: global options accepted after the subcommand."""

from __future__ import annotations

import pytest

from imsg_cli.main import hoist_globals


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        (["whoami", "--json"], ["--json", "whoami"]),
        (
            ["send", "bob@example.com", "hi", "--home", "H", "--json"],
            ["--home", "H", "--json", "send", "bob@example.com", "hi"],
        ),
        (["--home=H", "history", "x", "--relay=R"], ["--home=H", "--relay=R", "history", "x"]),
        (["send", "b", "--", "--json"], ["send", "b", "--", "--json"]),  # after --: text
        (["send", "b", "--attach", "f", "--insecure"], ["--insecure", "send", "b", "--attach", "f"]),
        (["receive", "--home"], ["receive", "--home"]),  # no value: left for the parser to refuse
        ([], []),
    ],
)
def test_hoist_globals(given, parsed):
    assert hoist_globals(given) == parsed
