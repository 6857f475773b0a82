"""The TLS context of an HTTP listener (``[http]`` and ``[web]``, shared/config/web.py
TlsListener): the certificate and key from the config (``mosaic-backup pki issue``),
TLS 1.2 or newer, or TLS 1.3 only."""

from __future__ import annotations

import ssl

from shared.config.web import TlsListener
from shared.errors import ConfigError


def server_context(cfg: TlsListener, section: str) -> ssl.SSLContext | None:
    """None without TLS; raises ConfigError naming ``section`` for files that do not load."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.tls13_only else ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[{section}] tls_cert/tls_key: cannot load {cfg.tls_cert} with {cfg.tls_key} "
            f"({exc}); make them with `mosaic-backup pki issue`"
        ) from None
    return ctx
