"""The base of every wire message: msgspec Structs, JSON on the wire.

Every message carries ``schema`` (the wire schema version). Evolution rule (msgspec's
schema-evolution guide): a new field always has a default, fields are never renamed or
retyped, and a breaking change bumps :data:`SCHEMA_VERSION`. One tagged union per
subject family (jobs, events, api, monitoring); decoders are built once at import.
"""

from __future__ import annotations

import msgspec

SCHEMA_VERSION = 1


class Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    schema: int = SCHEMA_VERSION


_enc = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _enc.encode(msg)


def tag_of(msg: msgspec.Struct) -> str:
    """The tag of a message: a job's kind, an event's subject token."""
    return str(type(msg).__struct_config__.tag)
