"""Opening one NATS connection: credentials, TLS, a bounded first wait, and a failure
that says in one line what to fix (unreachable, refused credentials, TLS handshake).

:class:`shared.bus.Bus` builds on the connection; nothing else opens one.

``nats_url`` may list the servers of one cluster, comma-separated: nats-py gets them as
its server pool, connects to any that answers, and (``max_reconnect_attempts=-1``: per
server, forever) moves to another one when its server dies, one second between rounds
over the pool (``reconnect_time_wait``). The pool also learns the cluster's other members
from the server's INFO. So a daemon rides out one server's death at once and a
whole-cluster restart as soon as any member is back.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Any

import anyio
from nats.aio.client import Client as NATS
from nats.errors import NoServersError

from shared.config.nats import nats_servers
from shared.errors import BusError
from shared.nkeys import provide_for_nats_py

log = logging.getLogger("shared.bus")  # the logger operators and tests know


def strip_credentials(url: str) -> str:
    """``nats://user:secret@host:4222`` → ``nats://host:4222`` for messages."""
    return re.sub(r"//[^/@]*@", "//", url)


def _tls_reason(exc: ssl.SSLError) -> str:
    """One line from an SSL error: the verification message when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc.strerror or type(exc).__name__).lower().replace("_", " ")


async def quiet(exc: Exception) -> None:
    """nats-py logs every reconnect failure loudly; our callers report errors themselves.

    A permissions violation is the exception: the server drops the denied message and
    the caller only sees a timeout, so the subject the server refused is logged here.
    """
    if "permissions violation" in str(exc).lower():
        log.warning("NATS refused: %s", exc)


async def open_nats(
    url: str,
    *,
    name: str,
    timeout: float,
    user: str | None,
    password: str | None,
    inbox_prefix: str | None,
    tls: ssl.SSLContext | None,
    nkeys_seed: str | None,
) -> NATS:
    """A connected client, retrying until ``timeout``; BusError naming the URL if it never
    works (see :meth:`shared.bus.Bus.connect`). ``url``: one URL or a cluster's list."""
    servers = _servers(url)
    nc = NATS()
    auth: dict[str, Any] = {}
    if user is not None:
        auth = {"user": user, "password": password or ""}
    if nkeys_seed is not None:
        provide_for_nats_py()
        auth["nkeys_seed"] = nkeys_seed
    if inbox_prefix is not None:
        auth["inbox_prefix"] = inbox_prefix
    if tls is not None:
        auth["tls"] = tls
    scope = anyio.move_on_after(timeout)
    refused = False
    tls_problem: str | None = None

    async def on_error(exc: Exception) -> None:
        # nats-py retries refused credentials forever and only tells error_cb. Stop
        # in its back-off sleep (reconnect_time_wait=1): cancelled right here, it
        # would leave the refused attempt's socket open.
        nonlocal refused, tls_problem
        if not nc.is_connected and "authorization violation" in str(exc).lower():
            refused = True
            scope.deadline = min(scope.deadline, anyio.current_time() + 0.2)
        if not nc.is_connected and isinstance(exc, ssl.SSLError):
            tls_problem = _tls_reason(exc)
            scope.deadline = min(scope.deadline, anyio.current_time() + 0.2)
        await quiet(exc)

    with scope:
        try:
            await nc.connect(
                servers=servers,
                name=name,
                **auth,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                drain_timeout=5,  # a stopping process must not hang for 30 s
            )
            return nc
        except (NoServersError, OSError, TimeoutError):
            pass  # reported below, with the URL
    with anyio.CancelScope(shield=True):
        await nc.close()
    if tls_problem is not None:
        raise BusError(
            f"NATS at {strip_credentials(url)}: TLS handshake failed: {tls_problem} (set "
            "nats_tls_ca to the CA that signed the server's certificate, and nats_tls_cert "
            "and nats_tls_key if the server verifies clients)",
            retryable=False,
        )
    if refused:
        raise _refused(url, user, nkeys_seed)
    raise BusError(
        f"NATS at {strip_credentials(url)} is unreachable after {timeout:.0f}s; "
        "start nats-server or fix nats_url",
        retryable=True,
    )


def _servers(url: str) -> list[str]:
    try:
        return nats_servers(url)
    except ValueError as exc:
        raise BusError(
            str(exc).replace("field nats_url: ", "nats_url: "), retryable=False
        ) from None


def _refused(url: str, user: str | None, nkeys_seed: str | None) -> BusError:
    who = f"user {user!r}" if user else "a client without credentials"
    if nkeys_seed is not None:
        who = f"the NKEY seed in {nkeys_seed}"
    if not user and strip_credentials(url) != url:
        who = "the credentials in the URL"
    return BusError(
        f"NATS at {strip_credentials(url)} refused {who}: wrong or missing "
        "credentials (check nats_user and nats_password_file, or nats_nkey_seed_file)",
        retryable=False,
    )
