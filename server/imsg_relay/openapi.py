"""/openapi.json (OpenAPI 3.1, whose schemas are JSON Schema 2020-12), generated from the
operations table (routes/__init__.py) and the msgspec types it names: the same objects the
router and the validator use. msgspec writes the JSON Schema of every type; this module
adds the paths, parameters, error responses and security around them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from imsg_relay import schema
from imsg_relay.operation import Operation
from imsg_relay.settings import MAX_PROVISIONING_MESSAGE, Settings

_REF = "#/components/schemas/{name}"
# Raw bytes, not JSON: a part upload's body, a download's response, a profile.
_BINARY_SCHEMAS = {
    "BlobBytes": {"type": "string", "format": "binary"},
    "ProfileBytes": {"type": "string", "format": "binary"},
}
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


def _ecma(node: Any) -> Any:
    """The schema with ECMA-262 patterns: a pattern's final `\\Z` (Python's end of string,
    see schema.py) published as `$`."""
    if isinstance(node, dict):
        out = {k: _ecma(v) for k, v in node.items()}
        p = out.get("pattern")
        if isinstance(p, str) and p.endswith("\\Z"):
            out["pattern"] = p[:-2] + "$"
        return out
    if isinstance(node, list):
        return [_ecma(v) for v in node]
    return node


def _param_schema(kind: Any) -> dict[str, Any]:
    """An inline schema of a path, query or header value (its description goes on the
    parameter, not in the schema)."""
    if isinstance(kind, dict):
        spec = kind
    else:
        (spec,), _ = msgspec.json.schema_components([kind], ref_template=_REF)
    return {k: v for k, v in _ecma(spec).items() if k != "description"}


def _ref(kind: Any) -> dict[str, str]:
    name = kind if isinstance(kind, str) else kind.__name__
    return {"$ref": _REF.format(name=name)}


def _components(operations: Iterable[Operation]) -> dict[str, Any]:
    types = {schema.Error}
    for op in operations:
        for kind in (op.request, op.response):
            if kind is not None and not isinstance(kind, str):
                types.add(kind)
    _, components = msgspec.json.schema_components(sorted(types, key=lambda t: t.__name__), ref_template=_REF)
    return {**_ecma(components), **_BINARY_SCHEMAS}


def build_openapi(operations: Iterable[Operation], settings: Settings) -> dict[str, Any]:
    operations = tuple(operations)
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
        for param in op.query:
            spec = _param_schema(param.type)
            if param.default is not None:
                spec["default"] = param.default
            parameters.append(
                {"name": param.name, "in": "query", "required": False, "description": param.description, "schema": spec}
            )
        for name, spec, text in op.headers:
            parameters.append(
                {"name": name, "in": "header", "required": False, "description": text, "schema": _param_schema(spec)}
            )
        ok: dict[str, Any] = {
            str(op.ok): {
                "description": "success",
                "content": {"application/json": {"schema": _ref(op.response)}},
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
                "content": {media: {"schema": _ref(op.request)}},
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
        "openapi": "3.1.0",
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
            "schemas": _components(operations),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "32 random bytes, base64url without padding, made at registration",
                }
            },
        },
    }
