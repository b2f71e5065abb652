"""`imsg privacy report` says what a relay that records every request still learns
(issue 12, docs/PROTOCOL.md §8b): a plain section in the human output, `still_learns` in
--json, and its address and first-contact lines follow the proxy and sealed-only settings."""

from __future__ import annotations

from support.cli import assert_ok, clean_env, run_imsg

FACTS = [
    "mailbox_sizes_and_times",
    "padded_sizes",
    "sealed_recipients",
    "ip_address",
    "first_contacts",
    "uploads",
    "timing",
    "account",
]


def facts(doc: dict) -> dict[str, str]:
    return {f["what"]: f["detail"] for f in doc["still_learns"]}


def test_the_report_says_what_the_relay_still_learns(tmp_path, module_relay_proc):
    url = module_relay_proc.url
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    assert_ok(run_imsg(alice, "init", "alice@example.com", relay=url, json_mode=True))
    assert_ok(run_imsg(bob, "init", "bob@example.com", relay=url, json_mode=True))
    assert_ok(run_imsg(alice, "send", "bob@example.com", "hello", json_mode=True))

    (doc,) = assert_ok(run_imsg(bob, "privacy", "report", json_mode=True))
    assert [f["what"] for f in doc["still_learns"]] == FACTS
    learns = facts(doc)
    assert "IP address on every request" in learns["ip_address"] and "--proxy" in learns["ip_address"]
    assert "1 queued now" in learns["mailbox_sizes_and_times"]
    assert "identified" in learns["first_contacts"]
    assert doc["devices"]  # the relay's own sections are still there

    human = run_imsg(bob, "privacy", "report")
    assert human.returncode == 0, human.stderr
    section = human.stdout.split("what the relay still learns", 1)
    assert len(section) == 2, human.stdout
    assert all(f"- {detail}" in section[1] for detail in learns.values())

    # Through a proxy the address line says which requests it hides (the report itself is
    # credentialed and goes direct, so no proxy needs to listen here).
    proxy = "socks5://127.0.0.1:9"
    (doc,) = assert_ok(run_imsg(bob, "privacy", "report", json_mode=True, env=clean_env(IMSG_PROXY=proxy)))
    assert proxy in facts(doc)["ip_address"] and "credentialed requests only" in facts(doc)["ip_address"]

    assert_ok(run_imsg(bob, "sealed", "only", "on", json_mode=True))
    (doc,) = assert_ok(run_imsg(bob, "privacy", "report", json_mode=True))
    assert "sealed-only is on" in facts(doc)["first_contacts"]
