"""The NATS options every operator command takes, and the connection they make.

One copy: the URL, user, password file, NKEY seed file and TLS files, each with its
``$MOSAIC_NATS_*`` default, so every operator command (backup, list, status, drill …)
reaches a NATS secured by ``nats-config`` the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from shared.config.nats import DEFAULT_NATS_URL, NatsClientConfig

if TYPE_CHECKING:
    from shared.bus import Bus

DEFAULT_NATS = DEFAULT_NATS_URL


def add_nats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats",
        default=os.environ.get("MOSAIC_NATS_URL", DEFAULT_NATS),
        help=f"NATS URL of the coordinator's bus (default: $MOSAIC_NATS_URL or {DEFAULT_NATS})",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up connecting to NATS after S seconds (default 10)",
    )
    env = os.environ.get
    p.add_argument(
        "--nats-user",
        default=env("MOSAIC_NATS_USER"),
        help="NATS user (default: $MOSAIC_NATS_USER; `nats-config` makes one named operator)",
    )
    p.add_argument(
        "--nats-password-file",
        default=env("MOSAIC_NATS_PASSWORD_FILE"),
        help="file holding that user's password (default: $MOSAIC_NATS_PASSWORD_FILE)",
    )
    p.add_argument(
        "--nats-nkey-seed-file",
        default=env("MOSAIC_NATS_NKEY_SEED_FILE"),
        help="NKEY seed file instead of a password (default: $MOSAIC_NATS_NKEY_SEED_FILE)",
    )
    for part, what in (("ca", "CA certificate"), ("cert", "client certificate"), ("key", "key")):
        p.add_argument(
            f"--nats-tls-{part}",
            default=env(f"MOSAIC_NATS_TLS_{part.upper()}"),
            help=f"TLS {what} for NATS (default: $MOSAIC_NATS_TLS_{part.upper()})",
        )


def nats_client_config(args: argparse.Namespace) -> NatsClientConfig:
    """The options of :func:`add_nats_args` as the struct every role connects with."""
    return NatsClientConfig(
        nats_url=args.nats,
        connect_timeout_s=args.connect_timeout,
        nats_user=args.nats_user,
        nats_password_file=args.nats_password_file,
        nats_nkey_seed_file=args.nats_nkey_seed_file,
        nats_tls_ca=args.nats_tls_ca,
        nats_tls_cert=args.nats_tls_cert,
        nats_tls_key=args.nats_tls_key,
    )


@asynccontextmanager
async def operator_bus(args: argparse.Namespace) -> AsyncIterator[Bus]:
    """Connect with the options of :func:`add_nats_args`; closed on leaving."""
    from shared.bus import Bus  # imported when used: every command parses this module

    bus = await Bus.connect_with(
        nats_client_config(args), name="mosaic-cli", where="NATS options (--nats-…): "
    )
    try:
        yield bus
    finally:
        await bus.aclose()
