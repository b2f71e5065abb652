"""Nothing is lost on a pipe (issue 18 item 5): a message counts as handed out only once
its line is written, and a reader that goes away ends `receive`/`watch` quietly (exit 0,
no traceback), through the real `imsg` command."""

from __future__ import annotations

import os
import subprocess

import pytest

from support.cli import assert_ok, clean_env, imsg_command
from support.cli import run_imsg as imsg

ANN, BEN = "ann@example.com", "ben@example.com"


@pytest.fixture
def homes(tmp_path, module_relay_proc, request):
    # the module's relay is shared: each test registers handles of its own
    tag = request.node.name.split("_")[1]
    ann, ben = tmp_path / "ann", tmp_path / "ben"
    assert_ok(imsg(ann, "init", f"ann-{tag}@example.com", relay=module_relay_proc.url, json_mode=True))
    assert_ok(imsg(ben, "init", f"ben-{tag}@example.com", relay=module_relay_proc.url, json_mode=True))
    return {"ann": ann, "ben": ben, "to": f"ben-{tag}@example.com"}


def _send(homes, text: str) -> str:
    [sent] = assert_ok(imsg(homes["ann"], "send", homes.get("to", BEN), "-", stdin=text, json_mode=True))
    return sent["id"]


def test_receive_into_a_pipe_whose_reader_left_loses_nothing(homes):
    ids = [_send(homes, "one"), _send(homes, "two"), _send(homes, "three")]
    r, w = os.pipe()
    os.close(r)  # the reader is gone (as `head -1` is after its line): no line can be written
    proc = subprocess.Popen(
        imsg_command(homes["ben"], "receive", json_mode=True),
        stdout=w,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )
    os.close(w)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # quietly, as pipes expect
    assert b"Traceback" not in err and b"error" not in err
    again = assert_ok(imsg(homes["ben"], "receive", json_mode=True))
    assert [m["id"] for m in again] == ids  # none was counted as handed out


def test_watch_into_a_closed_pipe_exits_quietly_and_keeps_the_message(homes):
    sent = _send(homes, "hello")
    r, w = os.pipe()
    os.close(r)  # no reader at all: the first line cannot be written
    proc = subprocess.Popen(
        imsg_command(homes["ben"], "watch", json_mode=True),
        stdout=w,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )
    os.close(w)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"bug" not in err
    [got] = assert_ok(imsg(homes["ben"], "receive", json_mode=True))
    assert got["id"] == sent


def test_watch_reconnects_after_a_relay_restart(tmp_path):
    import select

    from support.relays import ProcessRelay, closed_port_url

    port = closed_port_url().rsplit(":", 1)[1]
    relay = ProcessRelay(tmp_path / "relay", args=("--port", port)).start()
    watcher = None
    try:
        homes = {"ann": tmp_path / "ann", "ben": tmp_path / "ben"}
        assert_ok(imsg(homes["ann"], "init", ANN, relay=relay.url, json_mode=True))
        assert_ok(imsg(homes["ben"], "init", BEN, relay=relay.url, json_mode=True))
        watcher = subprocess.Popen(
            imsg_command(homes["ben"], "watch", json_mode=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
        )
        assert watcher.stdout is not None and watcher.stderr is not None

        def next_line(stream) -> bytes:
            ready, _, _ = select.select([stream], [], [], 60)
            assert ready, "watch printed nothing"
            return stream.readline()

        first = _send(homes, "before")
        assert first.encode() in next_line(watcher.stdout)
        relay.terminate()
        assert b"relay_unavailable" in next_line(watcher.stderr)  # said on stderr, and still running
        assert watcher.poll() is None
        relay.start()
        second = _send(homes, "after")
        assert second.encode() in next_line(watcher.stdout)
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.wait(10)
        relay.stop()
