"""Credentials for the NATS connection, read from the files a config names.

Kept out of :mod:`shared.config` so a loaded config never holds a secret: the password
file and the NKEY seed are read when connecting, and TLS files are turned into an
:class:`ssl.SSLContext` there. Every problem names the config field to fix.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.config.nats import NatsClientConfig


def check_nkey_seed(path: str | None, *, where: str = "") -> None:
    """Fail at load, naming the field, when the NKEY seed file is missing or not a seed."""
    if path is None:
        return
    from shared.nkeys import InvalidSeed, from_seed

    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{where}field 'nats_nkey_seed_file': {path} cannot be read: {exc.strerror} "
            "(fix the path or its permissions; `mosaic-backup nats-config --nkeys DIR` "
            "writes it)"
        ) from exc
    try:
        from_seed(text).wipe()
    except InvalidSeed as exc:
        raise ConfigError(
            f"{where}field 'nats_nkey_seed_file': {path} is {exc} (point it at a seed "
            "file written by `mosaic-backup nats-config --nkeys DIR`)"
        ) from None


def nats_password(cfg: NatsClientConfig, *, where: str = "") -> str | None:
    """The password in ``cfg.nats_password_file`` (trailing newline dropped), or None.

    Read when connecting, not at load time, so the secret is never part of a config
    object that might be printed.
    """
    if cfg.nats_password_file is None:
        return None
    p = Path(cfg.nats_password_file)
    try:
        return p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{where}field 'nats_password_file': {p} cannot be read: {exc.strerror} (fix the "
            "path or its "
            "permissions; `mosaic-backup nats-config` writes it)"
        ) from exc


def nats_tls(
    cfg: NatsClientConfig, *, source: Path | None = None, where: str = ""
) -> ssl.SSLContext | None:
    """An SSLContext for NATS from ``nats_tls_*``, or None when TLS is not configured.

    A missing or unreadable file names its field. The context always verifies the
    server's certificate and host name against ``nats_tls_ca`` (the system's CAs when
    only a client certificate is set).
    """
    where = f"config file {source}: " if source is not None else where
    return tls_context(cfg.nats_tls_ca, cfg.nats_tls_cert, cfg.nats_tls_key, where=where)


def tls_context(
    ca: str | None, cert: str | None, key: str | None, *, where: str = ""
) -> ssl.SSLContext | None:
    """:func:`nats_tls` for values from elsewhere (the operator CLI's options); ``where``
    prefixes the messages, which name the fields ``nats_tls_ca/cert/key``."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        missing = "nats_tls_key" if key is None else "nats_tls_cert"
        raise ConfigError(
            f"{where}field '{missing}': missing (a client certificate needs both "
            "nats_tls_cert and nats_tls_key; set both or neither)"
        )
    for field, value in (("nats_tls_ca", ca), ("nats_tls_cert", cert), ("nats_tls_key", key)):
        if value is not None and not Path(value).is_file():
            raise ConfigError(
                f"{where}field '{field}': {value} is not a readable file (fix the path; "
                "`mosaic-backup pki` writes these files)"
            )
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if ca is not None:
            ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{where}field 'nats_tls_ca': {ca} is not a PEM CA certificate "
            f"({getattr(exc, 'reason', None) or exc.strerror or exc.__class__.__name__})"
        ) from exc
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{where}field 'nats_tls_cert': {cert} with key {key} cannot be loaded "
                f"({getattr(exc, 'reason', None) or exc.strerror or exc.__class__.__name__}; "
                "check that the key belongs to the certificate)"
            ) from exc
    return ctx
