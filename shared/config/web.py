"""``[web]`` in coordinator.toml: the operators' console (coordinator/web/), a process of
its own (``mosaic-backup console run``) beside the coordinator, reading the same catalog
and NATS.

- ``listen`` / ``port``: where it serves; loopback by default.
- ``tls_cert`` / ``tls_key``: PEM files (``mosaic-backup pki issue`` makes them); both or
  neither. With TLS the session cookie is ``Secure`` and named ``__Host-…``.
- ``tls13_only``: refuse TLS 1.2 (the strategy asks for TLS 1.3 in transit).
"""

from __future__ import annotations

from typing import Annotated

import msgspec


class TlsListener(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The TLS fields of an HTTP listener (``[web]`` here, ``[http]`` in
    shared/config/coordinator.py); coordinator/tls.py builds the context from them."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls13_only: bool = False

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key, or neither")
        if self.tls13_only and self.tls_cert is None:
            raise ValueError("tls13_only needs tls_cert and tls_key")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class WebConfig(TlsListener, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[web]``: see the module docstring."""

    listen: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8480
