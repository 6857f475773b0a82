"""How a process reaches NATS: the one set of connection fields every role and every
operator command uses. ``agent.toml`` and ``coordinator.toml`` inherit them as top-level
keys (as they were always written); operator commands fill the same struct from their
flags and profile (mosaic.commands._options)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import msgspec

from shared.config.types import PositiveFloat

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def _shown(url: str) -> str:
    """A URL for a message: never its user and password."""
    return re.sub(r"//[^/@]*@", "//", url)


def nats_servers(nats_url: str) -> list[str]:
    """The server URLs of ``nats_url``: one URL, or several separated by commas (the
    members of one NATS cluster; a client tries them in turn and reconnects to any).

    Raises ValueError (``field nats_url: …``, credentials left out) for an empty list
    or an entry that is not ``SCHEME://HOST:PORT`` with a NATS scheme.
    """
    urls = [u.strip() for u in nats_url.split(",")]
    if not any(urls):
        raise ValueError(
            'field nats_url: is empty; write nats_url = "nats://HOST:4222" or several, '
            'comma-separated: "nats://n1:4222,nats://n2:4222,nats://n3:4222"'
        )
    for i, url in enumerate(urls, 1):
        where = f"entry {i} of {len(urls)}, " if len(urls) > 1 else ""
        problem = _url_problem(url)
        if problem:
            raise ValueError(
                f"field nats_url: {where}{_shown(url)!r} {problem}; write each server as "
                "nats://HOST:PORT (tls://, ws://, wss:// too), several separated by commas"
            )
    return urls


def _url_problem(url: str) -> str | None:
    if not url:
        return "is empty (a stray comma?)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "has an invalid port"
    if parts.scheme not in NATS_SCHEMES:
        return f"has scheme {parts.scheme or 'none'!r}, not one of {', '.join(NATS_SCHEMES)}"
    if not parts.hostname:
        return "names no host"
    if parts.path not in ("", "/") and parts.scheme in ("nats", "tls"):
        return f"has a path {parts.path!r}"
    del port  # parsed only to be checked; absent means nats-py's 4222
    return None


class NatsClientConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Where NATS is (default: a NATS on this host): one URL, or the members of a NATS
    # cluster separated by commas ("nats://n1:4222,nats://n2:4222,nats://n3:4222");
    # the client connects to any and reconnects to the others when one dies.
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

    def __post_init__(self) -> None:
        nats_servers(self.nats_url)  # every entry of a server list is a NATS URL
