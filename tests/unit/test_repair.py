"""The bounds of session repair (imsg.protocol.repair) and the retry receipt's content."""

from __future__ import annotations

import pytest

from imsg.protocol import repair
from imsg.protocol.content import KIND_RETRY, Content
from imsg.protocol.errors import DecodeError

T0 = 1_800_000_000_000
HOUR = 3600 * 1000
DAY = 24 * HOUR


def test_one_receipt_per_message_and_a_few_per_hour():
    log = repair.RepairLog()
    assert log.may_send_receipt("a.1", "m1", T0)
    assert not log.may_send_receipt("a.1", "m1", T0 + 1)  # the same message: once
    for i in range(2, repair.RECEIPTS_PER_DEVICE_PER_HOUR + 1):
        assert log.may_send_receipt("a.1", f"m{i}", T0 + i)
    assert not log.may_send_receipt("a.1", "m-over", T0 + 100)  # the hour's budget is spent
    assert log.may_send_receipt("a.2", "m-over", T0 + 100)  # per sender device
    assert log.may_send_receipt("a.1", "m-over", T0 + HOUR + 1)  # an hour later
    again = repair.RepairLog.decode(log.encode())
    assert not again.may_send_receipt("a.2", "m-over", T0 + 200)  # the log survives a restart


def test_one_resend_per_message_for_the_whole_window_and_a_daily_cap():
    log = repair.RepairLog()
    assert log.may_resend("b.1", "m", T0)
    assert not log.may_resend("b.1", "m", T0 + 20 * DAY)  # never twice
    for i in range(repair.RESENDS_PER_DEVICE_PER_DAY - 1):
        assert log.may_resend("b.1", f"n{i}", T0 + 1 + i)
    assert not log.may_resend("b.1", "late", T0 + 1000)
    assert log.may_resend("b.1", "late", T0 + DAY + 1)
    assert repair.last_repair(log, "b.1") == T0 + DAY + 1 and repair.last_repair(log, "x.1") is None


def test_only_our_own_recent_messages_to_the_requester_are_honoured():
    assert repair.may_honour("out", "acct", T0, "acct", T0 + DAY)
    assert not repair.may_honour("in", "acct", T0, "acct", T0 + DAY)  # theirs, not ours
    assert not repair.may_honour("out", "other", T0, "acct", T0 + DAY)  # sent to someone else
    assert not repair.may_honour("out", "acct", T0, "acct", T0 + repair.RESEND_WINDOW_MS + 1)  # too old


def test_a_damaged_log_starts_afresh():
    assert repair.RepairLog.decode("{not json").entries == {}
    assert repair.RepairLog.decode('{"a.1": 5}').entries == {}


def test_retry_receipt_content_round_trip_and_strictness():
    c = Content("ab" * 16, 1, KIND_RETRY, "a@x", "b@x", retry_id="cd" * 16, retry_device=2)
    assert Content.decode(c.encode()) == c
    for bad in (
        Content("ab" * 16, 1, KIND_RETRY, "a@x", "b@x", text="smuggled", retry_id="cd" * 16, retry_device=2),
        Content("ab" * 16, 1, KIND_RETRY, "a@x", "b@x", retry_id="zz" * 16, retry_device=2),
        Content("ab" * 16, 1, KIND_RETRY, "a@x", "b@x", retry_id="cd" * 16, retry_device=0),
    ):
        with pytest.raises(DecodeError):
            Content.decode(bad.encode())
