"""`imsg init` under a verifying relay, `imsg reachable ...`, `imsg lookup` and
`imsg send --from`, through the `imsg` command in subprocesses against a relay subprocess
that verifies with a `file:` verifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_cli import assert_json_error, imsg, json_lines


def ok(r) -> list[dict]:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return json_lines(r.stdout)


@pytest.fixture(scope="module")
def env(tmp_path_factory, module_relay_proc_factory):
    base = tmp_path_factory.mktemp("reach-e2e")
    codes = base / "codes.txt"
    relay = module_relay_proc_factory({"IMSG_RELAY_VERIFIER": f"file:{codes}"})
    return {"url": relay.url, "base": base, "codes": codes}


def code(env, handle: str) -> str:
    return [ln.split()[1] for ln in Path(env["codes"]).read_text().splitlines() if ln.split()[0] == handle][-1]


def run(env, home: Path, *args: str):
    return imsg(home, *args, relay=env["url"], json_mode=True)


def test_init_pending_verify_list_lookup_and_send_from(env):
    ann, ben = env["base"] / "ann", env["base"] / "ben"
    r = imsg(ann, "init", "Ann@Example.com", relay=env["url"])
    assert r.returncode == 0 and "imsg reachable verify ann@example.com CODE" in r.stderr
    assert ok(run(env, ann, "reachable", "list")) == [
        {"handle": "ann@example.com", "state": "pending", "receiving": True, "start_from": False}
    ]
    ok(run(env, ann, "reachable", "verify", "ann@example.com", code(env, "ann@example.com")))
    ok(run(env, ben, "init", "ben@example.com"))
    ok(run(env, ben, "reachable", "verify", "ben@example.com", code(env, "ben@example.com")))
    ok(run(env, ann, "reachable", "add", "+44 20 7946 0958"))
    ok(run(env, ann, "reachable", "verify", "+442079460958", code(env, "+442079460958")))
    assert ok(run(env, ben, "lookup", "ANN@example.com", "+44 (20) 7946-0958", "nobody@example.com")) == [
        {"handle": "ann@example.com", "reachable": True},
        {"handle": "+442079460958", "reachable": True},
        {"handle": "nobody@example.com", "reachable": False},
    ]
    ok(run(env, ann, "reachable", "start-from", "+442079460958"))
    ok(run(env, ann, "send", "ben@example.com", "from my number"))
    ok(run(env, ann, "send", "ben@example.com", "from my address", "--from", "ann@example.com"))
    got = ok(run(env, ben, "receive"))
    assert [(m["from"], m["to"], m["text"]) for m in got] == [
        ("+442079460958", "ben@example.com", "from my number"),
        ("ann@example.com", "ben@example.com", "from my address"),
    ]
    ok(run(env, ann, "reachable", "receive", "+442079460958", "--off"))
    assert ok(run(env, ben, "lookup", "+442079460958")) == [{"handle": "+442079460958", "reachable": False}]
    listed = ok(run(env, ann, "reachable", "list"))
    assert [(h["handle"], h["receiving"], h["start_from"]) for h in listed] == [
        ("ann@example.com", True, False),
        ("+442079460958", False, True),
    ]
    ok(run(env, ann, "reachable", "remove", "+442079460958"))
    assert [h["handle"] for h in ok(run(env, ann, "reachable", "list"))] == ["ann@example.com"]


@pytest.mark.parametrize(
    "args",
    [
        ("lookup", "not-a-handle"),
        ("lookup", "+1 555"),
        ("reachable", "add", "a@b@c"),
        ("send", "x@y", "hi"),
        ("reachable", "receive", "ann@example.com"),
        ("reachable", "verify", "ann@example.com", "12345"),
        ("reachable", "verify", "ann@example.com", "\u0661\u0662\u0663\u0664\u0665\u0666"),
    ],
)
def test_malformed_input_is_a_usage_error(env, args):
    home = env["base"] / "cal"
    if not (home / "imsg.db").exists():
        ok(run(env, home, "init", "cal@example.com"))
    assert_json_error(run(env, home, *args), 2)


def test_wrong_code_is_refused_with_tries_left(env):
    home = env["base"] / "dee"
    ok(run(env, home, "init", "dee@example.com"))
    right = code(env, "dee@example.com")
    doc = assert_json_error(
        run(env, home, "reachable", "verify", "dee@example.com", "000000" if right != "000000" else "111111"),
        5,
        "wrong_code",
    )
    assert doc["tries_left"] == 4
    assert_json_error(run(env, home, "send", "ann@example.com", "hi", "--from", "dee@example.com"), 3)


def test_init_says_so_when_the_code_could_not_be_sent(tmp_path, module_relay_proc_factory):
    relay = module_relay_proc_factory(
        {"IMSG_RELAY_VERIFIER": "sms-webhook", "IMSG_RELAY_WEBHOOK_URL": "http://127.0.0.1:9/unreachable"}
    )
    r = imsg(tmp_path / "fay", "init", "+15551230099", relay=relay.url, json_mode=True)
    assert r.returncode == 0, r.stderr
    warnings = [doc for doc in json_lines(r.stderr) if doc.get("warning") or doc.get("error")]
    assert any("could not send a code" in doc.get("message", "") for doc in warnings), r.stderr
