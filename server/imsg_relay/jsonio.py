"""JSON encoding in one place: msgspec's encoder (bytes become standard base64 with
padding, as the API's binary fields are), so every response is encoded the same way."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


def dumps(value: Any) -> bytes:
    return _encoder.encode(value)
