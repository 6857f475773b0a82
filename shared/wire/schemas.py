"""JSON Schema of every wire family, for other systems that consume the events."""

from __future__ import annotations

import msgspec

from shared.wire.api import ApiReply, ApiRequest
from shared.wire.events import Event
from shared.wire.jobs import Job


def json_schemas() -> dict[str, object]:
    return {
        "job": msgspec.json.schema(Job),
        "event": msgspec.json.schema(Event),
        "api_request": msgspec.json.schema(ApiRequest),
        "api_reply": msgspec.json.schema(ApiReply),
    }
