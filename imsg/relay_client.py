"""HTTP to the relay (docs/RELAY-API.md). No cryptography here: bytes in, bytes out.

This is the only module of the client that touches the network. Errors become
`RelayUnavailableError` (retryable: connection failures, timeouts, 5xx) or
`RelayRefusedError` (a JSON error from the relay, with its stable code).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import socket
import ssl
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# httpx imports its own command-line client (rich, click: ~70 ms, a quarter of the `imsg
# send` budget) when they are installed, and falls back cleanly when that import fails.
# We never use httpx's CLI, so mark it absent before the first import of httpx.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None there means "absent" to import

import httpx

from imsg.errors import (
    InsecureRelayError,
    RelayRefusedError,
    RelayUnavailableError,
    UsageError,
)

# A JSON object as the relay sent it: decoded, not validated. Each caller checks the fields
# it reads (a relay may send anything), so the values stay Any.
JsonObject = dict[str, Any]

DEFAULT_TIMEOUT = 15.0
TRANSFER_TIMEOUT = 120.0  # one attachment part (8 MiB) or a download's gaps between chunks


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise RelayRefusedError("relay sent malformed base64", relay_code="bad_response") from None


def check_relay_url(url: str, *, allow_insecure: bool = False) -> str:
    """Refuse plain HTTP to anything but loopback (DESIGN §4)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not a relay url: {url!r}", hint="for example http://127.0.0.1:8787")
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname):
        raise InsecureRelayError()
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class RemoteAccount:
    account_id: str
    account_key: bytes  # type-tagged
    device_list: bytes
    devices: list[int]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """An answer of POST /v1/discovery/evaluate, as the relay sent it (unchecked)."""

    evaluated: list[bytes]
    proof: bytes
    prefix_bits: int
    key_id: str


@dataclass(frozen=True, slots=True)
class Envelope:
    message_id: str
    body: bytes
    received_at: int


def answer(response: httpx.Response, *, credentialed: bool) -> JsonObject:
    """The JSON body of a 2xx answer, or the error it stands for."""
    if response.status_code == 204:
        return {}
    if response.status_code >= 500:
        raise RelayUnavailableError(f"relay error {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise RelayRefusedError(
            f"relay sent a non-json answer ({response.status_code})",
            status=response.status_code,
            relay_code="bad_response",
        ) from None
    if response.status_code >= 400:
        code = body.get("error", "relay_refused") if isinstance(body, dict) else "relay_refused"
        message = body.get("message", code) if isinstance(body, dict) else code
        extra = {k: v for k, v in body.items() if k not in ("error", "message")} if isinstance(body, dict) else {}
        if response.status_code == 429:
            extra.setdefault("retry_after", response.headers.get("Retry-After"))
        if response.status_code == 401 and credentialed:
            raise RelayRefusedError(
                "the relay no longer accepts this device: it was removed from the account",
                status=401,
                relay_code=code,
                hint="to use it again, link it from another device: imsg device add / imsg device link",
            )
        if response.status_code == 413:
            # Too large is final: the same request will be refused again, so never the
            # "unreachable, retrying is safe" advice a reset connection would give.
            raise RelayRefusedError(
                f"relay refused: {message}",
                status=413,
                relay_code=code,
                hint="this relay takes nothing that large here; retrying the same request will not help",
                **extra,
            )
        raise RelayRefusedError(f"relay refused: {message}", status=response.status_code, relay_code=code, **extra)
    if not isinstance(body, dict):
        raise RelayRefusedError("relay sent an unexpected answer", relay_code="bad_response")
    return body


def parse_account(body: JsonObject) -> RemoteAccount:
    try:
        return RemoteAccount(
            str(body["account_id"]),
            b64d(body["account_key"]),
            b64d(body["device_list"]),
            [int(d) for d in body["devices"]],
        )
    except (KeyError, TypeError, ValueError):
        raise RelayRefusedError("relay sent a malformed account", relay_code="bad_response") from None


def parse_bundles(body: JsonObject) -> list[JsonObject]:
    devices = body.get("devices")
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise RelayRefusedError("relay sent malformed prekey bundles", relay_code="bad_response")
    return devices


def parse_buckets(body: JsonObject) -> dict[int, list[tuple[bytes, bytes]]]:
    try:
        return {int(b["prefix"]): [(b64d(e["tag"]), b64d(e["record"])) for e in b["entries"]] for b in body["buckets"]}
    except (KeyError, TypeError, ValueError):
        raise RelayRefusedError("relay sent malformed buckets", relay_code="bad_response") from None


def sealed_body(message_id: str, envelopes: list[tuple[int, bytes]]) -> JsonObject:
    return {"message_id": message_id, "messages": [{"device_id": d, "body": b64e(b)} for d, b in envelopes]}


def check_proxy_url(url: str) -> str:
    """A SOCKS5 proxy for the unauthenticated requests (`--proxy`, IMSG_PROXY). socks5h
    resolves the relay's name at the proxy (no DNS query of ours names the relay)."""
    parts = urlsplit(url)
    if parts.scheme not in ("socks5", "socks5h") or not parts.hostname or parts.port is None:
        raise UsageError(f"not a SOCKS5 proxy: {url!r}", hint="for example socks5://127.0.0.1:9050 (Tor)")
    if parts.username or parts.password:
        raise UsageError(
            "give the proxy without a username: imsg picks a fresh random one for every request",
            hint="so that Tor's IsolateSOCKSAuth gives each request its own circuit",
        )
    return url


def _verify_from_env() -> ssl.SSLContext | bool:
    """What httpx's trust_env would take for certificate checks, and nothing else of it."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if not cafile and not capath:
        return True
    return ssl.create_default_context(cafile=cafile or None, capath=capath or None)


class AnonymousRelay:
    """The relay without our credential, for everything that names or narrows a recipient
    (docs/PROTOCOL.md, "what the relay learns"). Every request goes on a FRESH connection
    (its own httpx.Client: no keep-alive shared with any other request, no Authorization,
    no cookies), so a relay that records connections cannot join two of them, nor one of
    them to our credentialed requests. Through a SOCKS5 proxy each request carries a fresh
    random proxy username and password: Tor (IsolateSOCKSAuth, its default) then builds
    each its own circuit, so the source address does not join them either."""

    def __init__(
        self,
        base_url: str,
        *,
        proxy: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        allow_insecure: bool = False,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = check_relay_url(base_url, allow_insecure=allow_insecure)
        self.proxy = check_proxy_url(proxy) if proxy else None
        self._timeout = timeout
        self._transport = transport  # tests: an in-process relay (then there is no connection)
        self._takes_credentials: bool | None = None  # the proxy's answer, asked once

    def _client(self) -> httpx.Client:
        proxy = None
        if self.proxy and self._transport is None:
            auth = (secrets.token_hex(8), secrets.token_hex(8)) if self._proxy_takes_credentials() else None
            proxy = httpx.Proxy(self.proxy, auth=auth)
        return httpx.Client(
            base_url=self.base_url,
            headers={"User-Agent": "imsg/0.1"},
            timeout=self._timeout,
            transport=self._transport,
            proxy=proxy,
            # No environment: a ~/.netrc entry would add an Authorization header, and an
            # HTTP(S)_PROXY variable would route around the proxy chosen here. The CA
            # settings (SSL_CERT_FILE / SSL_CERT_DIR) are still honoured, as by RelayClient.
            trust_env=False,
            verify=_verify_from_env(),
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def _proxy_takes_credentials(self) -> bool:
        """Whether the proxy takes a username and password (Tor does, and with
        IsolateSOCKSAuth gives each username a circuit of its own). A proxy that takes
        only "no authentication" (most local SOCKS servers) gets none: offering only
        credentials, the request would fail. Asked once, with a bare SOCKS5 greeting
        (RFC 1928 §3) that carries no request and reaches no relay."""
        if self._takes_credentials is None:
            parts = urlsplit(self.proxy or "")
            try:
                with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=self._timeout) as s:
                    s.sendall(b"\x05\x01\x02")  # version 5, one method: username/password
                    answer = b""
                    while len(answer) < 2 and (chunk := s.recv(2 - len(answer))):
                        answer += chunk
            except OSError as exc:
                raise RelayUnavailableError(f"SOCKS proxy {self.proxy} unreachable ({type(exc).__name__})") from None
            self._takes_credentials = answer == b"\x05\x02"
        return self._takes_credentials

    @contextmanager
    def _network(self, what: str = "") -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise RelayUnavailableError(f"relay at {self.base_url} timed out{what}") from None
        except httpx.HTTPError as exc:
            raise RelayUnavailableError(f"relay at {self.base_url} unreachable ({type(exc).__name__})") from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JsonObject:
        with self._network(), self._client() as http:
            response = http.request(method, path, json=json, params=params, headers=headers)
            return answer(response, credentialed=False)

    def get_account(self, account_id: str) -> RemoteAccount:
        """An account's key and signed device list: public data (the caller checks both)."""
        return parse_account(self._request("GET", f"/v1/accounts/{account_id}"))

    def fetch_bundles(
        self, account_id: str, access_key: bytes | None, device_id: int | None = None
    ) -> list[JsonObject]:
        """Prekey bundles, authorized by the account's unidentified-access key (our own
        account's for our own devices; None: only an account that allows anyone answers):
        no credential of ours names whom we fetch."""
        params = {"device_id": device_id} if device_id is not None else None
        headers = {"Unidentified-Access-Key": b64e(access_key)} if access_key else None
        body = self._request("GET", f"/v1/keys/{account_id}", params=params, headers=headers)
        return parse_bundles(body)

    def send_sealed(
        self, account_id: str, message_id: str, envelopes: list[tuple[int, bytes]], access_key: bytes | None
    ) -> JsonObject:
        headers = {"Unidentified-Access-Key": b64e(access_key)} if access_key else None
        return self._request(
            "PUT", f"/v1/sealed/messages/{account_id}", headers=headers, json=sealed_body(message_id, envelopes)
        )

    def get_profile(self, account_id: str, key_id: str, *, max_bytes: int) -> bytes | None:
        """An account's profile ciphertext, or None (none under that key id); a body longer
        than `max_bytes` is refused while it streams."""
        with self._network(), self._client() as http:
            with http.stream("GET", f"/v1/profile/{account_id}/{key_id}") as response:
                if response.status_code == 404:
                    return None
                if response.status_code >= 400:
                    response.read()
                    answer(response, credentialed=False)
                data = bytearray()
                for chunk in response.iter_bytes(1 << 16):
                    data += chunk
                    if len(data) > max_bytes:
                        raise RelayRefusedError(
                            "relay sent a profile larger than any profile can be", relay_code="bad_response"
                        )
                return bytes(data)

    def download_blob(self, blob_id: str, *, start: int = 0) -> Iterator[bytes]:
        """Yield the blob's bytes from offset `start` (an HTTP range), in chunks. The blob id
        (128 random bits, known only from the end-to-end message) is the capability."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        with self._network(" during a download"), self._client() as http:
            with http.stream("GET", f"/v1/blobs/{blob_id}", headers=headers, timeout=TRANSFER_TIMEOUT) as r:
                if r.status_code >= 400:
                    r.read()
                    answer(r, credentialed=False)
                if start and r.status_code != 206:
                    raise RelayRefusedError("relay ignored the range of a resumed download", relay_code="bad_response")
                yield from r.iter_bytes(1 << 20)

    def buckets(self, bits: int, prefixes: list[int]) -> dict[int, list[tuple[bytes, bytes]]]:
        body = self._request("POST", "/v1/discovery/buckets", json={"prefix_bits": bits, "prefixes": prefixes})
        return parse_buckets(body)

    def discovery_key(self) -> JsonObject:
        """The relay's signed discovery (VOPRF) public key, as sent: the caller checks it."""
        return self._request("GET", "/v1/discovery/key")


class RelayClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        allow_insecure: bool = False,
        transport: httpx.BaseTransport | None = None,
        proxy: str | None = None,
    ):
        self.base_url = check_relay_url(base_url, allow_insecure=allow_insecure)
        # Only for anonymous(): credentialed requests name us anyway; they go direct.
        self.proxy = check_proxy_url(proxy) if proxy else None
        self._token = token
        headers = {"User-Agent": "imsg/0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._transport_for_copy = transport

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JsonObject:
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.TimeoutException:
            raise RelayUnavailableError(f"relay at {self.base_url} timed out") from None
        except httpx.HTTPError as exc:
            raise RelayUnavailableError(f"relay at {self.base_url} unreachable ({type(exc).__name__})") from None
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> JsonObject:
        return answer(response, credentialed=bool(self._token))

    # --- accounts ---

    def health(self) -> JsonObject:
        return self._request("GET", "/v1/health")

    def register(
        self,
        *,
        account_id: str,
        account_key: bytes,
        handle: str,
        device_list: bytes,
        device_id: int,
        token: str,
        label: bytes = b"",
    ) -> JsonObject:
        return self._request(
            "POST",
            "/v1/accounts",
            json={
                "account_id": account_id,
                "account_key": b64e(account_key),
                "handle": handle,
                "label": b64e(label),
                "device_list": b64e(device_list),
                "device_id": device_id,
                "token": token,
            },
        )

    def get_account(self, account_id: str) -> RemoteAccount:
        return parse_account(self._request("GET", f"/v1/accounts/{account_id}"))

    # --- discovery: the private lookup of who holds a handle (docs/PROTOCOL.md §8a) ---

    def evaluate(self, elements: list[bytes]) -> Evaluation:
        """RFC 9497 VOPRF BlindEvaluate of each blinded element, the one proof for them, the
        key id the relay says it used, and the bucket prefix length (the caller checks the
        proof and the length against its own limits)."""
        body = self._request("POST", "/v1/discovery/evaluate", json={"elements": [b64e(e) for e in elements]})
        try:
            evaluated = [b64d(e) for e in body["evaluated"]]
            proof = b64d(body["proof"])
            bits = int(body["prefix_bits"])
            key_id = str(body["key_id"])
        except (KeyError, TypeError, ValueError):
            raise RelayRefusedError("relay sent a malformed evaluation", relay_code="bad_response") from None
        if len(evaluated) != len(elements) or not 0 <= bits <= 16:
            raise RelayRefusedError("relay sent a malformed evaluation", relay_code="bad_response")
        return Evaluation(evaluated, proof, bits, key_id)

    def buckets(self, bits: int, prefixes: list[int]) -> dict[int, list[tuple[bytes, bytes]]]:
        return parse_buckets(
            self._request("POST", "/v1/discovery/buckets", json={"prefix_bits": bits, "prefixes": prefixes})
        )

    # --- reachable: this account's own handles, each with its handle label ---

    def add_handle(self, handle: str, label: bytes) -> JsonObject:
        return self._request("POST", "/v1/handles", json={"handle": handle, "label": b64e(label)})

    def verify_handle(self, handle: str, code: str) -> JsonObject:
        return self._request("POST", "/v1/handles/verify", json={"handle": handle, "code": code})

    def list_handles(self) -> list[JsonObject]:
        body = self._request("GET", "/v1/handles")
        rows = body.get("handles")
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise RelayRefusedError("relay sent a malformed handle list", relay_code="bad_response")
        return rows

    def update_handle(self, handle_id: str, *, receiving: bool | None = None, label: bytes | None = None) -> JsonObject:
        doc: JsonObject = {}
        if receiving is not None:
            doc["receiving"] = receiving
        if label is not None:
            doc["label"] = b64e(label)
        return self._request("PATCH", f"/v1/handles/{handle_id}", json=doc)

    def remove_handle(self, handle_id: str) -> JsonObject:
        return self._request("DELETE", f"/v1/handles/{handle_id}")

    # --- prekeys ---

    def publish_keys(self, payload: JsonObject) -> JsonObject:
        return self._request("PUT", "/v1/keys", json=payload)

    def key_count(self) -> JsonObject:
        return self._request("GET", "/v1/keys/count")

    def fetch_bundles(self, account_id: str, device_id: int | None = None) -> list[JsonObject]:
        """Credentialed: only right before an identified send to a recipient whose access key
        we do not hold (otherwise AnonymousRelay.fetch_bundles with the access key)."""
        params = {"device_id": device_id} if device_id is not None else None
        return parse_bundles(self._request("GET", f"/v1/keys/{account_id}", params=params))

    # --- messages ---

    def send(self, account_id: str, message_id: str, envelopes: list[tuple[int, bytes]]) -> JsonObject:
        return self._request(
            "PUT",
            f"/v1/messages/{account_id}",
            json={
                "message_id": message_id,
                "messages": [{"device_id": d, "body": b64e(b)} for d, b in envelopes],
            },
        )

    def fetch(self, *, wait: float = 0, limit: int = 100) -> tuple[list[Envelope], bool]:
        wait = max(0, min(int(wait), 60))
        body = self._request(
            "GET", "/v1/messages", params={"wait": wait, "limit": limit}, timeout=DEFAULT_TIMEOUT + wait
        )
        try:
            out = [Envelope(str(m["message_id"]), b64d(m["body"]), int(m["received_at"])) for m in body["messages"]]
        except (KeyError, TypeError, ValueError):
            raise RelayRefusedError("relay sent malformed messages", relay_code="bad_response") from None
        return out, bool(body.get("more", False))

    def ack(self, message_ids: list[str]) -> None:
        for i in range(0, len(message_ids), 500):
            self._request("POST", "/v1/messages/ack", json={"message_ids": message_ids[i : i + 500]})

    # --- sealed sender ---

    def anonymous(self) -> AnonymousRelay:
        """The relay without our credential, each request on a fresh connection (and through
        the proxy, if one is set): for everything that names a recipient."""
        return AnonymousRelay(self.base_url, proxy=self.proxy, transport=self._transport_for_copy, allow_insecure=True)

    def sealed_keys(self) -> list[tuple[bytes, bytes | None]]:
        """The relay's certificate keys [(type-tagged public key, endorsement)], oldest first."""
        body = self._request("GET", "/v1/sealed/keys")
        try:
            return [
                (b64d(k["public_key"]), b64d(k["endorsement"]) if k.get("endorsement") else None) for k in body["keys"]
            ]
        except (KeyError, TypeError):
            raise RelayRefusedError("relay sent malformed sealed-sender keys", relay_code="bad_response") from None

    def sender_certificate(self, identity_key: bytes) -> bytes:
        body = self._request("POST", "/v1/sealed/certificate", json={"identity_key": b64e(identity_key)})
        return b64d(str(body.get("certificate", "")))

    def sealed_access(self) -> JsonObject:
        return self._request("GET", "/v1/sealed/access")

    def set_sealed_access(self, access_key: bytes | None, allow_anyone: bool) -> JsonObject:
        body: JsonObject = {"allow_anyone": allow_anyone}
        if access_key is not None:
            body["access_key"] = b64e(access_key)
        return self._request("PUT", "/v1/sealed/access", json=body)

    # --- devices ---

    def add_device(self, device_id: int, token: str, device_list: bytes) -> JsonObject:
        return self._request("PUT", f"/v1/devices/{device_id}", json={"token": token, "device_list": b64e(device_list)})

    def remove_device(self, device_id: int, device_list: bytes | None) -> JsonObject:
        body = {"device_list": b64e(device_list)} if device_list is not None else {}
        return self._request("DELETE", f"/v1/devices/{device_id}", json=body)

    # --- provisioning (device linking) ---

    def open_channel(self) -> tuple[str, int]:
        body = self._request("POST", "/v1/provisioning", json={})
        return str(body.get("channel", "")), int(body.get("expires_at", 0))

    def close_channel(self, channel: str) -> None:
        self._request("DELETE", f"/v1/provisioning/{channel}")

    def put_box(self, channel: str, box: str, data: bytes) -> None:
        self._request("PUT", f"/v1/provisioning/{channel}/{box}", json={"body": b64e(data)})

    def get_box(self, channel: str, box: str, *, wait: float = 0) -> bytes | None:
        wait = max(0, min(int(wait), 60))
        body = self._request(
            "GET", f"/v1/provisioning/{channel}/{box}", params={"wait": wait}, timeout=DEFAULT_TIMEOUT + wait
        )
        value = body.get("body")
        return b64d(value) if isinstance(value, str) else None

    # --- attachment blobs (opaque ciphertext) ---

    def create_blob(self, size: int) -> JsonObject:
        return self._request("POST", "/v1/blobs", json={"size": size})

    def blob_status(self, blob_id: str) -> JsonObject:
        return self._request("GET", f"/v1/blobs/{blob_id}/status")

    def put_part(self, blob_id: str, index: int, chunks: Iterable[bytes], length: int) -> JsonObject:
        """Upload one part, streaming `chunks` (an iterable of bytes) of exactly `length` bytes."""
        try:
            response = self._http.request(
                "PUT",
                f"/v1/blobs/{blob_id}/parts/{index}",
                content=chunks,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
                timeout=TRANSFER_TIMEOUT,
            )
        except httpx.TimeoutException:
            raise RelayUnavailableError(f"relay at {self.base_url} timed out during an upload") from None
        except httpx.HTTPError as exc:
            raise RelayUnavailableError(f"relay at {self.base_url} unreachable ({type(exc).__name__})") from None
        return self._answer(response)

    def complete_blob(self, blob_id: str) -> JsonObject:
        return self._request("POST", f"/v1/blobs/{blob_id}/complete", json={}, timeout=TRANSFER_TIMEOUT)

    def delete_blob(self, blob_id: str) -> JsonObject:
        return self._request("DELETE", f"/v1/blobs/{blob_id}")

    # --- profiles ---

    def put_profile(self, key_id: str, blob: bytes) -> JsonObject:
        """Store our profile ciphertext (replacing the one held) under `key_id` (hex)."""
        with self._network():
            response = self._http.request(
                "PUT", f"/v1/profile/{key_id}", content=blob, headers={"Content-Type": "application/octet-stream"}
            )
        return self._answer(response)

    @contextmanager
    def _network(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise RelayUnavailableError(f"relay at {self.base_url} timed out") from None
        except httpx.HTTPError as exc:
            raise RelayUnavailableError(f"relay at {self.base_url} unreachable ({type(exc).__name__})") from None

    # --- backups (the bytes are ciphertext sealed under the recovery code) ---

    def put_backup(self, data: bytes, access_hash: bytes) -> JsonObject:
        try:
            response = self._http.request(
                "PUT",
                "/v1/backup",
                content=data,
                params={"access_hash": access_hash.hex()},
                headers={"Content-Type": "application/octet-stream"},
                timeout=TRANSFER_TIMEOUT,
            )
        except httpx.TimeoutException:
            raise RelayUnavailableError(f"relay at {self.base_url} timed out during a backup upload") from None
        except httpx.HTTPError as exc:
            raise RelayUnavailableError(f"relay at {self.base_url} unreachable ({type(exc).__name__})") from None
        return self._answer(response)

    def backup_status(self) -> JsonObject | None:
        try:
            return self._request("GET", "/v1/backup")
        except RelayRefusedError as exc:
            if exc.status == 404:
                return None
            raise

    def delete_backup(self) -> bool:
        return bool(self._request("DELETE", "/v1/backup").get("deleted"))

    # A RelayClient made with the backup access token as its bearer token restores.

    def restore_account(self) -> RemoteAccount:
        return parse_account(self._request("GET", "/v1/restore/account"))

    def restore_backup(self, max_size: int) -> bytes:
        """The backup's bytes; more than `max_size` is refused as it streams in."""
        out = bytearray()
        try:
            with self._http.stream("GET", "/v1/restore/backup", timeout=TRANSFER_TIMEOUT) as r:
                if r.status_code >= 400:
                    r.read()
                    self._answer(r)
                for chunk in r.iter_bytes(1 << 20):
                    out += chunk
                    if len(out) > max_size:
                        raise RelayRefusedError(
                            "relay sent a backup larger than any imsg makes", relay_code="bad_response"
                        )
        except httpx.TimeoutException:
            raise RelayUnavailableError(f"relay at {self.base_url} timed out during a download") from None
        except httpx.HTTPError as exc:
            raise RelayUnavailableError(f"relay at {self.base_url} unreachable ({type(exc).__name__})") from None
        return bytes(out)

    def restore_device(
        self, device_id: int, *, token: str, device_list: bytes, signed_at: int, signature: bytes
    ) -> JsonObject:
        return self._request(
            "PUT",
            f"/v1/restore/devices/{device_id}",
            json={
                "token": token,
                "device_list": b64e(device_list),
                "signed_at": signed_at,
                "signature": b64e(signature),
            },
        )

    # --- privacy report ---

    def privacy_report(self) -> JsonObject:
        return self._request("GET", "/v1/privacy/report")
