"""The control-plane bus: a thin wrapper over nats-py and JetStream.

- ``MOSAIC_JOBS`` is a work-queue stream; each agent has one durable pull consumer on
  its own subject. Jobs are published with ``Nats-Msg-Id`` = job id, so JetStream drops
  a duplicate publish inside the duplicate window. An agent acks a job only after its
  result event is stored, and sends in-progress acks while it works; a job whose agent
  dies is redelivered after ``ack_wait``.
- ``MOSAIC_EVENTS`` keeps every event (limits retention) for the coordinator's durable
  consumer and for any other system that listens.
- Operator commands use core NATS request/reply on ``mosaic.api.<verb>``.
Streams and consumers are created idempotently, so every process may call
:meth:`Bus.ensure_streams` at start.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    NoRespondersError,
    NoServersError,
)
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError

from shared import subjects, tracing
from shared.errors import BusError
from shared.messages import (
    ApiError,
    ApiReply,
    ApiRequest,
    Event,
    Job,
    encode,
    event_decoder,
    event_kind,
    reply_decoder,
    request_decoder,
)
from shared.nkeys import provide_for_nats_py

log = logging.getLogger(__name__)

JOBS_DUPLICATE_WINDOW_S = 3600.0
EVENTS_MAX_AGE_S = 30 * 86400.0
MAX_DELIVER = 5


def strip_credentials(url: str) -> str:
    """``nats://user:secret@host:4222`` → ``nats://host:4222`` for messages."""
    return re.sub(r"//[^/@]*@", "//", url)


def _tls_reason(exc: ssl.SSLError) -> str:
    """One line from an SSL error: the verification message when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc.strerror or type(exc).__name__).lower().replace("_", " ")


async def _quiet(exc: Exception) -> None:
    """nats-py logs every reconnect failure loudly; our callers report errors themselves.

    A permissions violation is the exception: the server drops the denied message and
    the caller only sees a timeout, so the subject the server refused is logged here.
    """
    if "permissions violation" in str(exc).lower():
        log.warning("NATS refused: %s", exc)


class Bus:
    def __init__(self, nc: NATS, url: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.url = strip_credentials(url)
        self._closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        timeout: float = 10.0,
        user: str | None = None,
        password: str | None = None,
        inbox_prefix: str | None = None,
        tls: ssl.SSLContext | None = None,
        nkeys_seed: str | None = None,
    ) -> Bus:
        """Connect, retrying until ``timeout``; BusError naming the URL if it never works.

        After the first connection, nats-py reconnects forever (daemons ride out NATS
        restarts); only the initial wait is bounded. Refused credentials fail at once:
        retrying cannot help. ``inbox_prefix`` gives an agent inboxes that only its own
        NATS user may subscribe to (``subjects.agent_inbox``). ``tls`` (see
        ``shared.nats_credentials.nats_tls``) verifies the server; a failed TLS handshake fails at
        once, naming the problem: retrying cannot fix a certificate. ``nkeys_seed`` is
        the path of an NKEY seed file (``shared.nkeys``); nats-py reads it per connect.
        """
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
            await _quiet(exc)

        with scope:
            try:
                await nc.connect(
                    url,
                    name=name,
                    **auth,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=on_error,
                    drain_timeout=5,  # a stopping process must not hang for 30 s
                )
                return cls(nc, url)
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
            who = f"user {user!r}" if user else "a client without credentials"
            if nkeys_seed is not None:
                who = f"the NKEY seed in {nkeys_seed}"
            if not user and strip_credentials(url) != url:
                who = "the credentials in the URL"
            raise BusError(
                f"NATS at {strip_credentials(url)} refused {who}: wrong or missing "
                "credentials (check nats_user and nats_password_file, or nats_nkey_seed_file)",
                retryable=False,
            )
        raise BusError(
            f"NATS at {strip_credentials(url)} is unreachable after {timeout:.0f}s; "
            "start nats-server or fix nats_url",
            retryable=True,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.nc.is_closed:
            await self.nc.drain()

    # --- streams and consumers -------------------------------------------------------

    async def _ensure_stream(self, cfg: api.StreamConfig) -> None:
        try:
            await self.js.add_stream(cfg)
        except BadRequestError:
            await self.js.update_stream(cfg)

    async def ensure_streams(self, *, create: bool = True) -> None:
        """Create or update both streams; with ``create=False`` (an agent whose NATS user
        may not manage streams) only check that the coordinator has made them."""
        if not create:
            for stream in (subjects.JOBS_STREAM, subjects.EVENTS_STREAM):
                try:
                    await self.js.stream_info(stream)
                except NotFoundError:
                    raise BusError(
                        f"stream {stream} does not exist on NATS at {self.url}: start the "
                        "coordinator first (this NATS user may not create streams)",
                        retryable=True,
                    ) from None
            return
        await self._ensure_stream(
            api.StreamConfig(
                name=subjects.JOBS_STREAM,
                subjects=[subjects.jobs_all()],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=JOBS_DUPLICATE_WINDOW_S,
            )
        )
        await self._ensure_stream(
            api.StreamConfig(
                name=subjects.EVENTS_STREAM,
                subjects=[subjects.events_all()],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=EVENTS_MAX_AGE_S,
                duplicate_window=120.0,
            )
        )

    async def job_consumer(self, agent: str, ack_wait: float) -> Any:
        """The agent's durable pull subscription: one job in flight at a time."""
        return await self.js.pull_subscribe(
            subjects.job(agent),
            durable=subjects.agent_consumer(agent),
            stream=subjects.JOBS_STREAM,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_deliver=MAX_DELIVER,
                max_ack_pending=1,
            ),
        )

    async def events_consumer(self, durable: str) -> Any:
        return await self.js.pull_subscribe(
            subjects.events_all(),
            durable=durable,
            stream=subjects.EVENTS_STREAM,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30.0),
        )

    # --- publishing ------------------------------------------------------------------

    async def publish_job(self, job: Job) -> bool:
        """Publish a job; return True if JetStream dropped it as a duplicate."""
        ack = await self.js.publish(
            subjects.job(job.agent),
            encode(job),
            stream=subjects.JOBS_STREAM,
            headers=tracing.inject({"Nats-Msg-Id": job.job_id}),
        )
        return bool(ack.duplicate)

    async def publish_event(self, ev: Event) -> None:
        """Publish and wait until the events stream has stored it (with the current
        span's ``traceparent``, so recording it joins the job's trace)."""
        subject = subjects.event(ev.agent, ev.job_id, event_kind(ev))
        await self.js.publish(
            subject, encode(ev), stream=subjects.EVENTS_STREAM, headers=tracing.inject({}) or None
        )

    async def watch_job(self, job_id: str, timeout: float) -> AsyncGenerator[Event, None]:
        """Every event of one job from the start (stored ones first), until ``timeout``
        passes with no new event."""
        sub = await self.js.subscribe(
            subjects.events_of_job(job_id),
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except NatsTimeout:
                    raise BusError(f"no event for job {job_id} within {timeout:.0f}s") from None
                yield event_decoder.decode(msg.data)
        finally:
            with contextlib.suppress(ConnectionClosedError, ConnectionDrainingError):
                await sub.unsubscribe()

    # --- operator request/reply ------------------------------------------------------

    async def request(self, verb: str, req: ApiRequest, timeout: float = 10.0) -> ApiReply:
        try:
            msg = await self.nc.request(subjects.api(verb), encode(req), timeout=timeout)
        except NoRespondersError:
            raise BusError(f"no coordinator is answering on NATS at {self.url}") from None
        except NatsTimeout:
            raise BusError(f"the coordinator did not answer within {timeout:.0f}s") from None
        reply: ApiReply = reply_decoder.decode(msg.data)
        return reply

    async def serve(self, verb: str, handler: Callable[[ApiRequest], Awaitable[ApiReply]]) -> Any:
        async def on_msg(msg: Msg) -> None:
            try:
                req = request_decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                await msg.respond(encode(ApiError(code="bad_request", message=str(exc))))
                return
            try:
                reply = await handler(req)
            except Exception as exc:
                log.exception("api %s failed", verb)
                reply = ApiError(code=getattr(exc, "code", "internal"), message=str(exc))
            await msg.respond(encode(reply))

        return await self.nc.subscribe(
            subjects.api(verb), queue=subjects.COORDINATOR_QUEUE, cb=on_msg
        )


async def fetch_one(sub: Any, timeout: float) -> Msg | None:
    """One message from a pull subscription, or None when none arrived in ``timeout``."""
    try:
        msgs = await sub.fetch(1, timeout=timeout)
    except (NatsTimeout, TimeoutError):
        return None
    except NotFoundError as exc:
        raise BusError(f"consumer vanished: {exc}") from exc
    return msgs[0] if msgs else None
