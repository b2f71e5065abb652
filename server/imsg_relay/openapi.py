"""/openapi.json, generated from the operations table in `app.py` and the schemas in
`schema.py` — the same objects the router and the validator use."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from imsg_relay import schema
from imsg_relay.settings import MAX_PROVISIONING_MESSAGE, Settings

_BINARY = {"application/octet-stream": {"schema": {"$ref": "#/components/schemas/BlobBytes"}}}

_ERROR_TEXT = {
    400: "malformed JSON, wrong types, bad base64 or out-of-range values (bad_request)",
    401: "missing, malformed or unknown token (unauthorized)",
    403: "wrong verification code, with `tries_left` (wrong_code)",
    404: "unknown account, device, handle, unknown or expired provisioning channel, or "
    "unknown, expired, incomplete (download) or another account's (upload) blob "
    "(not_found)",
    409: "account_exists, handle_taken, device_exists, device_mismatch, too_many_devices, "
    "too_many_channels, blob_complete, incomplete (with `missing` parts), "
    "too_many_handles, no_code (no live verification code: send a new one), "
    "prefix_bits_changed (with the relay's current `prefix_bits`), or "
    "stale_revision (a profile older than the one held)",
    413: "request body, envelope, list, blob, blob part or profile over its limit "
    "(payload_too_large), or the account's blob quota (quota_exceeded, with `limit` and "
    "`used`)",
    415: "request body is not application/json (application/octet-stream for a blob part or "
    "a profile) "
    "(unsupported_media_type)",
    416: "the Range is outside the blob (range_not_satisfiable); Content-Range: bytes */size",
    429: "rate limited, or a provisioning box full; see Retry-After (rate_limited, box_full)",
    502: "the verification code could not be delivered; retry later (verifier_failed)",
    503: "storage temporarily unavailable; retry (unavailable)",
}


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERROR_TEXT[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status == 416:
        response["headers"] = {"Content-Range": {"schema": {"type": "string"}, "description": "bytes */size"}}
    if status == 429:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "seconds to wait"}
        }
    return response


def _param_schema(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "description"}


def build_openapi(operations: Iterable[Any], settings: Settings) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        statuses = {400, 413, 503}  # any route: bad query/path values, an oversized body
        if op.auth:
            statuses.add(401)
            statuses.add(429)  # the per-credential request rate
        if op.request is not None:
            statuses.add(415)
        statuses.update(op.errors)
        parameters = []
        for name, spec in op.path_params:
            parameters.append({"name": name, "in": "path", "required": True, "schema": _param_schema(spec)})
        for name, spec, text in op.query:
            parameters.append(
                {"name": name, "in": "query", "required": False, "description": text, "schema": _param_schema(spec)}
            )
        for name, spec, text in op.headers:
            parameters.append(
                {"name": name, "in": "header", "required": False, "description": text, "schema": _param_schema(spec)}
            )
        ok: dict[str, Any] = {
            str(op.ok): {
                "description": "success",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.response}"}}},
            }
        }
        if op.binary_response:
            length = {"schema": {"type": "integer", "minimum": 0}}
            ok = {
                str(op.ok): {
                    "description": "the whole blob",
                    "content": _BINARY,
                    "headers": {"Content-Length": length, "Accept-Ranges": {"schema": {"type": "string"}}},
                },
                "206": {
                    "description": "the range asked for",
                    "content": _BINARY,
                    "headers": {
                        "Content-Length": length,
                        "Content-Range": {"schema": {"type": "string"}, "description": "bytes a-b/size"},
                    },
                },
            }
            parameters.append(
                {
                    "name": "Range",
                    "in": "header",
                    "required": False,
                    "description": "one range: bytes=a-b, bytes=a- or bytes=-n",
                    "schema": {"type": "string"},
                }
            )
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": {
                **ok,
                **{str(s): _error_response(s) for s in sorted(statuses)},
            },
        }
        if op.links:
            entry["responses"][str(op.ok)]["links"] = {
                name: {"operationId": target, "parameters": dict(params)} for name, target, params in op.links
            }
        if parameters:
            entry["parameters"] = parameters
        if op.request is not None:
            media = "application/octet-stream" if op.binary_request else "application/json"
            entry["requestBody"] = {
                "required": op.request_required,
                "content": {media: {"schema": {"$ref": f"#/components/schemas/{op.request}"}}},
            }
        entry["security"] = [{"bearer": []}] if op.auth else []
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "this document",
            "security": [],
            "responses": {
                "200": {
                    "description": "the OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "imsg relay",
            "version": "1",
            "description": "Stores and forwards opaque end-to-end encrypted envelopes. "
            "See docs/RELAY-API.md. Limits: request body "
            f"{settings.max_body} bytes, envelope {settings.max_envelope} bytes; "
            f"provisioning message {MAX_PROVISIONING_MESSAGE} bytes; blob "
            f"{settings.max_blob} bytes in parts of {settings.blob_part_size}, "
            f"{settings.blob_quota} bytes of unexpired blobs per account, kept "
            f"{settings.blob_retention_days} days from creation.",
        },
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(schema.S),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "32 random bytes, base64url without padding, made at registration",
                }
            },
        },
    }
