from __future__ import annotations

from pathlib import Path

import pytest

from imsg_relay.ratelimit import RateLimiter
from imsg_relay.settings import Settings, SettingsError


def test_settings_from_env_and_overrides():
    env = {
        "IMSG_RELAY_PORT": "9000",
        "IMSG_RELAY_DATA": "/srv/relay",
        "IMSG_RELAY_SEND_RATE": "500",
        "IMSG_RELAY_RETENTION_DAYS": "7",
        "IMSG_RELAY_MAX_BODY": "2048",
        "IMSG_RELAY_SECRET_FILE": "/run/secret",
    }
    s = Settings.from_env(env, port=0)
    assert s.port == 0  # the flag wins
    assert s.data_dir == Path("/srv/relay")
    assert s.send_rate == 500 and s.send_burst == 500
    assert s.retention_days == 7 and s.max_body == 2048
    assert s.secret_path == Path("/run/secret")
    assert "secret" not in repr(s)


@pytest.mark.parametrize(
    "env",
    [
        {"IMSG_RELAY_PORT": "x"},
        {"IMSG_RELAY_RETENTION_DAYS": "91"},
        {"IMSG_RELAY_SEND_RATE": "0"},
        {"IMSG_RELAY_PORT": "70000"},
    ],
)
def test_bad_settings_are_refused(env):
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_sliding_window_refuses_the_61st_inside_one_second():
    now = [0.0]
    limiter = RateLimiter(60, 60, clock=lambda: now[0])
    for i in range(60):
        now[0] = i * 0.015  # 60 messages in 0.9 s
        assert limiter.retry_after("k") == 0
    now[0] = 0.95
    wait = limiter.retry_after("k")
    assert 0 < wait <= 0.05 + 1e-9  # the first one leaves the window at 1.0 s
    now[0] = 1.0001
    assert limiter.retry_after("k") == 0
    assert limiter.retry_after("other") == 0


def test_rate_limiter_memory_is_bounded():
    now = [0.0]
    limiter = RateLimiter(10, 10, clock=lambda: now[0], max_keys=100)
    for i in range(1000):
        now[0] += 0.001
        limiter.retry_after(i)
    assert len(limiter._events) <= 100


def test_blob_settings_from_env():
    s = Settings()
    assert (s.max_blob, s.blob_quota, s.blob_part_size, s.blob_retention_days) == (100 * 2**20, 2**30, 8 * 2**20, 30)
    s = Settings.from_env(
        {
            "IMSG_RELAY_MAX_BLOB": "1000",
            "IMSG_RELAY_BLOB_QUOTA": "5000",
            "IMSG_RELAY_BLOB_PART_SIZE": "2048",
            "IMSG_RELAY_BLOB_RETENTION_DAYS": "7",
        }
    )
    assert (s.max_blob, s.blob_quota, s.blob_part_size, s.blob_retention_days) == (1000, 5000, 2048, 7)
    assert s.blob_retention_ms == 7 * 86_400_000


@pytest.mark.parametrize(
    "env",
    [
        {"IMSG_RELAY_BLOB_RETENTION_DAYS": "91"},
        {"IMSG_RELAY_BLOB_RETENTION_DAYS": "0"},
        {"IMSG_RELAY_BLOB_PART_SIZE": "100"},
        {"IMSG_RELAY_BLOB_PART_SIZE": str(2**28 + 1)},
        {"IMSG_RELAY_MAX_BLOB": "0"},
        {"IMSG_RELAY_BLOB_QUOTA": "0"},
    ],
)
def test_bad_blob_settings_are_refused(env):
    with pytest.raises(SettingsError):
        Settings.from_env(env)
