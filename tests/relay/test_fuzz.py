"""Random JSON, headers and paths at every route: never a 5xx, always a JSON error."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from imsg_relay.app import OPERATIONS, create_app

from .helpers import open_channel, register
from support.relays import relay_settings

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=60),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=6),
    max_leaves=25,
)

# Bodies shaped like the real ones, with any value in any field: they get past the
# "is it an object" check and into the per-field validation.
field_names = st.sampled_from(
    [
        "account_id",
        "account_key",
        "handle",
        "device_list",
        "device_id",
        "token",
        "message_id",
        "messages",
        "body",
        "message_ids",
        "signed_prekey",
        "kem_last_resort",
        "one_time",
        "kem_one_time",
        "key_id",
        "public_key",
        "signature",
        "channel",
        "box",
        "size",
    ]
)
shaped = st.dictionaries(field_names, json_values, max_size=8)

# "@channel" stands for a live provisioning channel the fixture opened.
path_values = st.sampled_from(
    [
        "a" * 32,
        "0" * 32,
        "1",
        "0",
        "-1",
        "99999999999999999999",
        "%00",
        "..",
        "x" * 300,
        "count",
        "0123456789abcdef",
        "@channel",
        "@channel",
        "ABCDEF0123456789",
    ]
)
box_values = st.sampled_from(["new", "existing", "NEW", "old", "", "%2e%2e"])


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    settings = relay_settings(tmp_path_factory.mktemp("fuzz"))
    with TestClient(create_app(settings)) as client:
        ident = register(client, devices=2)
        channel = open_channel(client, ident)
        yield client, ident, channel


@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    op=st.sampled_from(OPERATIONS),
    body=st.one_of(json_values, shaped),
    param=path_values,
    box=box_values,
    auth=st.booleans(),
    query=st.text(max_size=30),
)
def test_random_json_never_5xx(fuzz_client, op, body, param, box, auth, query):
    client, ident, channel = fuzz_client
    param = param.replace("@channel", channel)
    path = (
        op.path.replace("{account_id}", param)
        .replace("{device_id}", param)
        .replace("{channel}", param)
        .replace("{box}", box)
        .replace("{blob_id}", param)
        .replace("{index}", param)
    )
    headers = {"Content-Type": "application/json"}
    if auth:
        headers.update(ident.headers(2))  # device 2: keep device 1 for the fixture's account
    r = client.request(
        op.method,
        path,
        params={"wait": "0", "limit": query[:5] or "1", "device_id": query[:3] or "1"},
        content=json.dumps(body).encode(),
        headers=headers,
    )
    assert r.status_code < 500, (op.method, path, body, r.text)
    if r.status_code >= 400:
        err = r.json()
        assert isinstance(err["error"], str) and isinstance(err["message"], str)


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.text(alphabet="/v1abcdeghikmnoprstuvxy{}0123456789%._-", max_size=40),
    raw=st.binary(max_size=200),
    ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
)
def test_random_bytes_at_random_paths_never_5xx(fuzz_client, method, path, raw, ctype):
    client, ident, _ = fuzz_client
    headers = dict(ident.headers(2))
    if ctype:
        headers["Content-Type"] = ctype
    r = client.request(method, "/" + path.lstrip("/"), content=raw, headers=headers)
    assert r.status_code < 500, (method, path, raw, r.text)
    assert r.headers["content-type"].startswith("application/json")
