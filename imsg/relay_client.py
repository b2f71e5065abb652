"""HTTP to the relay (docs/RELAY-API.md). No cryptography here: bytes in, bytes out.

This is the only module of the client that touches the network. Errors become
`RelayUnavailableError` (retryable: connection failures, timeouts, 5xx) or
`RelayRefusedError` (a JSON error from the relay, with its stable code).
"""

from __future__ import annotations

import base64
import ipaddress
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
class Envelope:
    message_id: str
    body: bytes
    received_at: int


class RelayClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        allow_insecure: bool = False,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = check_relay_url(base_url, allow_insecure=allow_insecure)
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
            if response.status_code == 401 and self._token:
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
        body = self._request("GET", f"/v1/accounts/{account_id}")
        try:
            return RemoteAccount(
                str(body["account_id"]),
                b64d(body["account_key"]),
                b64d(body["device_list"]),
                [int(d) for d in body["devices"]],
            )
        except (KeyError, TypeError, ValueError):
            raise RelayRefusedError("relay sent a malformed account", relay_code="bad_response") from None

    # --- discovery: the private lookup of who holds a handle (docs/PROTOCOL.md §8a) ---

    def evaluate(self, elements: list[bytes]) -> tuple[list[bytes], int]:
        """RFC 9497 BlindEvaluate of each blinded element; and the bucket prefix length."""
        body = self._request("POST", "/v1/discovery/evaluate", json={"elements": [b64e(e) for e in elements]})
        try:
            evaluated = [b64d(e) for e in body["evaluated"]]
            bits = int(body["prefix_bits"])
        except (KeyError, TypeError, ValueError):
            raise RelayRefusedError("relay sent a malformed evaluation", relay_code="bad_response") from None
        if len(evaluated) != len(elements) or not 0 <= bits <= 16:
            raise RelayRefusedError("relay sent a malformed evaluation", relay_code="bad_response")
        return evaluated, bits

    def buckets(self, bits: int, prefixes: list[int]) -> dict[int, list[tuple[bytes, bytes]]]:
        body = self._request("POST", "/v1/discovery/buckets", json={"prefix_bits": bits, "prefixes": prefixes})
        try:
            return {
                int(b["prefix"]): [(b64d(e["tag"]), b64d(e["record"])) for e in b["entries"]] for b in body["buckets"]
            }
        except (KeyError, TypeError, ValueError):
            raise RelayRefusedError("relay sent malformed buckets", relay_code="bad_response") from None

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
        params = {"device_id": device_id} if device_id is not None else None
        body = self._request("GET", f"/v1/keys/{account_id}", params=params)
        devices = body.get("devices")
        if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
            raise RelayRefusedError("relay sent malformed prekey bundles", relay_code="bad_response")
        return devices

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

    def unauthenticated(self) -> RelayClient:
        """A client with no credential and its own connections, for sealed sends: nothing
        in such a request (token, connection) ties it to this device's other requests."""
        return RelayClient(self.base_url, None, transport=self._transport_for_copy, allow_insecure=True)

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

    def send_sealed(
        self, account_id: str, message_id: str, envelopes: list[tuple[int, bytes]], access_key: bytes | None
    ) -> JsonObject:
        headers = {"Unidentified-Access-Key": b64e(access_key)} if access_key else None
        return self._request(
            "PUT",
            f"/v1/sealed/messages/{account_id}",
            headers=headers,
            json={
                "message_id": message_id,
                "messages": [{"device_id": d, "body": b64e(b)} for d, b in envelopes],
            },
        )

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

    def download_blob(self, blob_id: str, *, start: int = 0) -> Iterator[bytes]:
        """Yield the blob's bytes from offset `start` (an HTTP range), in chunks."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            with self._http.stream("GET", f"/v1/blobs/{blob_id}", headers=headers, timeout=TRANSFER_TIMEOUT) as r:
                if r.status_code >= 400:
                    r.read()
                    self._answer(r)
                if start and r.status_code != 206:
                    raise RelayRefusedError("relay ignored the range of a resumed download", relay_code="bad_response")
                yield from r.iter_bytes(1 << 20)
        except httpx.TimeoutException:
            raise RelayUnavailableError(f"relay at {self.base_url} timed out during a download") from None
        except httpx.HTTPError as exc:
            raise RelayUnavailableError(f"relay at {self.base_url} unreachable ({type(exc).__name__})") from None

    # --- profiles ---

    def put_profile(self, key_id: str, blob: bytes) -> JsonObject:
        """Store our profile ciphertext (replacing the one held) under `key_id` (hex)."""
        with self._network():
            response = self._http.request(
                "PUT", f"/v1/profile/{key_id}", content=blob, headers={"Content-Type": "application/octet-stream"}
            )
        return self._answer(response)

    def get_profile(self, account_id: str, key_id: str, *, max_bytes: int) -> bytes | None:
        """An account's profile ciphertext, or None (none under that key id). Sent without
        our credential, so the relay does not learn who reads whose profile; a body longer
        than `max_bytes` is refused while it streams."""
        request = self._http.build_request("GET", f"/v1/profile/{account_id}/{key_id}")
        request.headers.pop("Authorization", None)
        with self._network():
            response = self._http.send(request, stream=True)
            try:
                if response.status_code == 404:
                    return None
                if response.status_code >= 400:
                    response.read()
                    self._answer(response)
                data = bytearray()
                for chunk in response.iter_bytes(1 << 16):
                    data += chunk
                    if len(data) > max_bytes:
                        raise RelayRefusedError(
                            "relay sent a profile larger than any profile can be", relay_code="bad_response"
                        )
                return bytes(data)
            finally:
                response.close()

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
        body = self._request("GET", "/v1/restore/account")
        try:
            return RemoteAccount(
                str(body["account_id"]),
                b64d(body["account_key"]),
                b64d(body["device_list"]),
                [int(d) for d in body["devices"]],
            )
        except (KeyError, TypeError, ValueError):
            raise RelayRefusedError("relay sent a malformed account", relay_code="bad_response") from None

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
