"""How a process reaches NATS: the one set of connection fields every role and every
operator command uses. ``agent.toml`` and ``coordinator.toml`` inherit them as top-level
keys (as they were always written); operator commands fill the same struct from their
flags and profile (mosaic.commands._options)."""

from __future__ import annotations

import msgspec

from shared.config.types import PositiveFloat

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class NatsClientConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Where NATS is (default: a NATS on this host).
    nats_url: str = DEFAULT_NATS_URL
    connect_timeout_s: PositiveFloat = 10.0
    # NATS user name and a file holding only its password (``mosaic-backup nats-config``
    # writes both); the password is read when connecting and never logged. Unset: connect
    # without credentials.
    nats_user: str | None = None
    nats_password_file: str | None = None
    # Or an NKEY: a file holding only this client's seed (``SU…``, written 0600 by
    # ``mosaic-backup nats-config --nkeys DIR``); checked at load, signed per connect.
    nats_nkey_seed_file: str | None = None
    # TLS to NATS (``mosaic-backup pki`` makes these): the CA that signed the server's
    # certificate, and this client's certificate and key when the server verifies
    # clients. Unset: plain TCP (fine on loopback only).
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
