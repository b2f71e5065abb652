"""`GET /v1/privacy/report`: everything the relay holds about the caller's account, read
straight from its tables by the queries in imsg_relay/privacy.py. Nothing is summarised
away here: the client computes ages and totals.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from imsg_relay.context import RelayContext
from imsg_relay.operation import Call, json_response
from imsg_relay.privacy import MAX_LISTED_ENVELOPES, SECTIONS, json_value


async def privacy_report(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    now = relay.now_ms()
    envelope_ms, blob_ms = relay.settings.retention_ms, relay.settings.blob_retention_ms
    report: dict[str, Any] = {
        "account_id": device.account_id,
        "generated_at": now,
        "retention": {
            "envelope_days": relay.settings.retention_days,
            "blob_days": relay.settings.blob_retention_days,
        },
    }
    for section in SECTIONS:
        rows = await relay.storage.report_rows(section.query, (device.account_id,))
        report[section.name] = [dict(zip(section.columns, map(json_value, row), strict=True)) for row in rows]
    # Expiry as the relay enforces it; an expired row may still sit on disk until the
    # sweeper runs (it is never served), and is reported, marked.
    for row in report["envelopes"]:
        row["expires_at"] = row["received_at"] + envelope_ms
        row["expired"] = row["expires_at"] <= now
    for row in report["mailboxes"]:
        row["bytes"] = int(row["bytes"] or 0)
    for row in report["blobs"]:
        row["complete"] = bool(row["complete"])
        row["expires_at"] = row["created_at"] + blob_ms
        row["expired"] = row["expires_at"] <= now
    for row in report["handles"]:
        row["receiving"] = bool(row["receiving"])
    for row in report["provisioning_channels"]:
        row["queued_bytes"] = int(row["queued_bytes"] or 0)
        row["expired"] = row["expires_at"] <= now
    report["envelopes_listed_max"] = MAX_LISTED_ENVELOPES
    return json_response(report)
