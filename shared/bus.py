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

With the accounts that ``mosaic-backup nats-config`` writes (docs/security.md), an agent
sees JetStream only through its account's imports, under ``subjects.JS_IMPORT_PREFIX``
(``js_prefix``): it may look up and pull its own consumer, which the coordinator
creates (:meth:`Bus.ensure_agent_consumer`), but create nothing. The coordinator checks
the streams and consumers it depends on (:meth:`Bus.check_control_plane`) and repairs
what someone else changed.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import NotFoundError

from shared import replicas, subjects, tracing
from shared.asking import ask
from shared.config.nats import NatsClientConfig
from shared.errors import BusError, NoCoordinator
from shared.js_publish import fetch_one as fetch_one  # moved; re-exported for callers
from shared.js_publish import publish_stored
from shared.nats_connect import open_nats, strip_credentials
from shared.wire.api import ApiError, ApiReply, ApiRequest, reply_decoder, request_decoder
from shared.wire.base import encode
from shared.wire.events import Event, event_decoder, event_kind
from shared.wire.jobs import Job

log = logging.getLogger(__name__)

JOBS_DUPLICATE_WINDOW_S = 3600.0
EVENTS_MAX_AGE_S = 30 * 86400.0
MAX_DELIVER = 5
# ack_wait of the agent consumers the coordinator creates: AgentConfig.ack_wait_s's
# default. An agent keeps its job alive every third of the consumer's actual value.
AGENT_ACK_WAIT_S = 30.0
CONSUMER_WAIT_S = 2.0  # an agent whose consumer does not exist yet asks again this often
WATCH_POLL_S = 0.1  # how often watch_job asks for the next stored event (operator CLIs)


@dataclass(frozen=True)
class Repair:
    """Something in JetStream that was not as the coordinator made it, and was fixed."""

    what: str  # "consumer MOSAIC_EVENTS/coordinator"
    found: str  # "missing", "filter ['x'] instead of ['mosaic.event.>']"
    done: str = "re-created"  # or "removed", "set back"

    @property
    def key(self) -> str:
        """A subject-safe name of the object (alert fingerprints, audit entries)."""
        return re.sub(r"[^A-Za-z0-9_-]+", "-", self.what).strip("-")

    def __str__(self) -> str:
        return f"{self.what}: {self.found}, {self.done}"


def _consumer_problem(cfg: api.ConsumerConfig, filter_subject: str) -> str | None:
    """What makes ``cfg`` unfit: another filter, push delivery, no explicit acks."""
    filters = list(cfg.filter_subjects or ([cfg.filter_subject] if cfg.filter_subject else []))
    if filters != [filter_subject]:
        return f"filter {filters} instead of [{filter_subject!r}]"
    if cfg.deliver_subject:
        return f"push delivery to {cfg.deliver_subject!r} instead of pull"
    if cfg.ack_policy != api.AckPolicy.EXPLICIT:
        return f"ack policy {cfg.ack_policy} instead of explicit"
    return None


class Bus:
    def __init__(
        self, nc: NATS, url: str, js_prefix: str | None = None, user: str | None = None
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(prefix=js_prefix) if js_prefix else nc.jetstream()
        self.js_prefix = js_prefix
        self.url = strip_credentials(url)
        self.job_ack_wait: float | None = None  # of the agent's consumer, once bound
        self._agent_consumers: set[str] = set()  # agents whose consumer this bus ensured
        self._closed = False
        self.user = user  # the NATS user name, for messages (shared/asking.py)

    @classmethod
    async def connect_with(
        cls,
        cfg: NatsClientConfig,
        *,
        name: str,
        timeout: float | None = None,
        inbox_prefix: str | None = None,
        js_prefix: str | None = None,
        where: str = "",
    ) -> Bus:
        """Connect as ``cfg`` says: the one path of the agent, the coordinator, the repo
        tools and every operator command. The password file and the TLS files are read
        now (never kept in a config); a problem names its field, after ``where``."""
        from shared.nats_credentials import check_nkey_seed, nats_password, nats_tls

        check_nkey_seed(cfg.nats_nkey_seed_file, where=where)
        bus = await cls.connect(
            cfg.nats_url,
            name=name,
            timeout=cfg.connect_timeout_s if timeout is None else timeout,
            user=cfg.nats_user,
            password=nats_password(cfg, where=where),
            inbox_prefix=inbox_prefix,
            tls=nats_tls(cfg, where=where),
            nkeys_seed=cfg.nats_nkey_seed_file,
            js_prefix=js_prefix,
        )
        if hasattr(cfg, "stream_replicas"):  # a coordinator's config: it owns the replicas
            replicas.manage(bus.nc, cfg.stream_replicas)
        return bus

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
        js_prefix: str | None = None,
    ) -> Bus:
        """Connect, retrying until ``timeout``; BusError naming the URL if it never works.

        After the first connection, nats-py reconnects forever (daemons ride out NATS
        restarts); only the initial wait is bounded. Refused credentials fail at once:
        retrying cannot help. ``inbox_prefix`` gives an agent inboxes that only its own
        NATS user may subscribe to (``subjects.agent_inbox``). ``tls`` (see
        ``shared.nats_credentials.nats_tls``) verifies the server; a failed TLS handshake fails at
        once, naming the problem: retrying cannot fix a certificate. ``nkeys_seed`` is
        the path of an NKEY seed file (``shared.nkeys``); nats-py reads it per connect.
        ``js_prefix`` is where this account sees JetStream (``subjects.JS_IMPORT_PREFIX``
        for an agent account of ``nats-config``).
        """
        nc = await open_nats(
            url,
            name=name,
            timeout=timeout,
            user=user,
            password=password,
            inbox_prefix=inbox_prefix,
            tls=tls,
            nkeys_seed=nkeys_seed,
        )
        return cls(nc, url, js_prefix, user)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.nc.is_closed:
            await self.nc.drain()

    # --- streams and consumers -------------------------------------------------------

    async def _ensure_stream(self, cfg: api.StreamConfig) -> None:
        await replicas.ensure_stream(self.js, cfg)  # with R copies (shared/replicas.py)

    @staticmethod
    def stream_configs() -> list[api.StreamConfig]:
        """The two streams of this module, as the coordinator creates them."""
        return [
            api.StreamConfig(
                name=subjects.JOBS_STREAM,
                subjects=[subjects.jobs_all()],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=JOBS_DUPLICATE_WINDOW_S,
            ),
            api.StreamConfig(
                name=subjects.EVENTS_STREAM,
                subjects=[subjects.events_all()],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=EVENTS_MAX_AGE_S,
                duplicate_window=120.0,
                allow_direct=True,  # watch_job reads one job's events with DIRECT.GET
            ),
        ]

    async def ensure_streams(self) -> None:
        """Create or update both streams (the coordinator; in one shared account, as
        with ``quickstart``, agents too)."""
        for cfg in self.stream_configs():
            await self._ensure_stream(cfg)

    @staticmethod
    def agent_consumer_config(agent: str, ack_wait: float = AGENT_ACK_WAIT_S) -> api.ConsumerConfig:
        durable = subjects.agent_consumer(agent)
        return api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=subjects.job(agent),
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=MAX_DELIVER,
            max_ack_pending=1,
        )

    async def job_consumer(self, agent: str, ack_wait: float) -> Any:
        """The agent's durable pull subscription: one job in flight at a time.

        An agent that sees JetStream through its account's imports (``js_prefix``) may
        not create consumers: it waits until the coordinator has made its consumer, then
        binds it, and keeps the job alive by the consumer's ``ack_wait``. Otherwise
        (one shared account, ``quickstart``) it creates or updates its own."""
        durable = subjects.agent_consumer(agent)
        if self.js_prefix is None:
            info = await self.js.add_consumer(
                subjects.JOBS_STREAM, self.agent_consumer_config(agent, ack_wait)
            )
        else:
            info = await self._await_consumer(durable)
        self.job_ack_wait = float(info.config.ack_wait or ack_wait)
        return await self.js.pull_subscribe_bind(durable=durable, stream=subjects.JOBS_STREAM)

    async def _await_consumer(self, durable: str) -> api.ConsumerInfo:
        told = False
        while True:
            try:
                info: api.ConsumerInfo = await self.js.consumer_info(subjects.JOBS_STREAM, durable)
                return info
            except NotFoundError:
                reason = "it does not exist yet"
            except NoRespondersError:
                reason = "this account imports no JetStream API (regenerate with nats-config)"
            if not told:
                log.warning(
                    "waiting for the coordinator to create consumer %s on NATS at %s: %s",
                    durable,
                    self.url,
                    reason,
                )
                told = True
            await anyio.sleep(CONSUMER_WAIT_S)

    async def ensure_agent_consumer(self, agent: str) -> None:
        """The coordinator creates each agent's consumer (once per process), so agent
        accounts need no right to create or change any consumer."""
        if agent in self._agent_consumers:
            return
        try:
            await self.js.consumer_info(subjects.JOBS_STREAM, subjects.agent_consumer(agent))
        except NotFoundError:
            await self.js.add_consumer(subjects.JOBS_STREAM, self.agent_consumer_config(agent))
        self._agent_consumers.add(agent)

    @staticmethod
    def events_consumer_config(durable: str, start_seq: int = 0) -> api.ConsumerConfig:
        """``start_seq`` > 0: a consumer re-created after someone removed it goes on
        from the first event not yet recorded instead of replaying the whole stream."""
        return api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=subjects.events_all(),
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE
            if start_seq
            else api.DeliverPolicy.ALL,
            opt_start_seq=start_seq or None,
        )

    async def events_consumer(self, durable: str) -> Any:
        """Bind ``durable``, creating it if it does not exist (check it first with
        :meth:`check_control_plane`: an existing consumer is used as it is)."""
        try:
            await self.js.consumer_info(subjects.EVENTS_STREAM, durable)
        except NotFoundError:
            await self.js.add_consumer(subjects.EVENTS_STREAM, self.events_consumer_config(durable))
        return await self.js.pull_subscribe_bind(durable=durable, stream=subjects.EVENTS_STREAM)

    # --- control-plane checks (the coordinator) ------------------------------------

    async def check_control_plane(
        self,
        durable: str,
        agents: Iterable[str],
        *,
        next_event_seq: int = 0,
        create_missing_silently: bool = False,
    ) -> list[Repair]:
        """Check both streams, the coordinator's events consumer ``durable``, and the
        agents' consumers against what this module creates; fix what differs and return
        what was fixed. Consumers on the jobs stream that are no agent's own are removed
        (on a work queue they would take jobs away). ``create_missing_silently``: at
        start, a missing object is the first start, not a change."""
        repairs: list[Repair] = []
        for cfg in self.stream_configs():
            assert cfg.name is not None
            try:
                stream = await self.js.stream_info(cfg.name)
            except NotFoundError:
                await self._ensure_stream(cfg)
                if not create_missing_silently:
                    repairs.append(Repair(f"stream {cfg.name}", "missing (deleted)"))
                continue
            found = sorted(stream.config.subjects or [])
            if found != sorted(cfg.subjects or []) or (
                cfg.allow_direct and not stream.config.allow_direct
            ):
                await replicas.update_stream(self.js, cfg)
                repairs.append(Repair(f"stream {cfg.name}", f"subjects {found}", "set back"))
        want = self.events_consumer_config(durable, next_event_seq)
        repair = await self._check_consumer(
            subjects.EVENTS_STREAM, want, subjects.events_all(), create_missing_silently
        )
        repairs += [repair] if repair else []
        known = set(agents) | self._agent_consumers
        listed = {info.name: info for info in await self._job_consumers()}
        for agent in sorted(known):
            repair = await self._check_consumer(
                subjects.JOBS_STREAM,
                self.agent_consumer_config(agent),
                subjects.job(agent),
                create_missing_silently,
                listed.pop(subjects.agent_consumer(agent), None),
            )
            repairs += [repair] if repair else []
            self._agent_consumers.add(agent)
        for name, info in listed.items():
            # agents of a shared account (quickstart) create ``agent-<name>`` themselves
            owner = name.removeprefix("agent-") if name.startswith("agent-") else None
            try:
                fit = owner is not None and not _consumer_problem(info.config, subjects.job(owner))
            except ValueError:  # not a valid agent name at all
                fit = False
            if not fit:
                await self.js.delete_consumer(subjects.JOBS_STREAM, name)
                problem = f"not an agent's own consumer (filter {info.config.filter_subject!r})"
                repairs.append(
                    Repair(f"consumer {subjects.JOBS_STREAM}/{name}", problem, "removed")
                )
        return repairs

    async def _job_consumers(self) -> list[api.ConsumerInfo]:
        """Every consumer of the jobs stream, 256 per request (the server's page)."""
        out: list[api.ConsumerInfo] = []
        while True:
            page = await self.js.consumers_info(subjects.JOBS_STREAM, offset=len(out))
            out += page
            if not page:
                return out

    async def _check_consumer(
        self,
        stream: str,
        want: api.ConsumerConfig,
        filter_subject: str,
        silent: bool,
        info: api.ConsumerInfo | None = None,
    ) -> Repair | None:
        """``info``: what a listing found (None: look it up, a miss means missing)."""
        assert want.durable_name is not None
        what = f"consumer {stream}/{want.durable_name}"
        if info is None:
            try:
                info = await self.js.consumer_info(stream, want.durable_name)
            except NotFoundError:
                pass
        if info is None:
            await self.js.add_consumer(stream, want)
            return None if silent else Repair(what, "missing (deleted)")
        problem = _consumer_problem(info.config, filter_subject)
        if problem is None:
            return None
        await self.js.delete_consumer(stream, want.durable_name)
        await self.js.add_consumer(stream, want)
        return Repair(what, problem)

    # --- publishing ------------------------------------------------------------------

    async def publish_job(self, job: Job) -> bool:
        """Publish a job; return True if JetStream dropped it as a duplicate. The agent's
        consumer is made first: agents of a ``nats-config`` account cannot make it."""
        await self.ensure_agent_consumer(job.agent)
        ack = await publish_stored(  # through a stream leader change (shared/js_publish.py)
            self.js,
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
        await publish_stored(  # retried, stored once (shared/js_publish.py)
            self.js, subject, encode(ev), stream=subjects.EVENTS_STREAM, headers=tracing.inject({})
        )

    async def watch_job(self, job_id: str, timeout: float) -> AsyncGenerator[Event, None]:
        """Every event of one job from the start, in order, until ``timeout`` passes
        with no new event.

        Read with DIRECT.GET (next message on the job's subjects after the last one
        seen), the one JetStream call an operator account imports: a consumer would need
        the right to create consumers, whose delivery subject is a redirection. Asked
        first through the import prefix, then, on a shared account, directly."""
        where = subjects.events_of_job(job_id)
        js = self.js
        if self.js_prefix is None:
            js = self.nc.jetstream(prefix=subjects.JS_IMPORT_PREFIX)
        seq = 1
        idle_until = anyio.current_time() + timeout
        while True:
            try:
                msg = await js.get_msg(
                    subjects.EVENTS_STREAM, seq=seq, subject=where, next=True, direct=True
                )
            except NoRespondersError:
                if js is self.js:
                    raise BusError(
                        f"NATS at {self.url} has no events stream to follow job {job_id} "
                        "(is the coordinator running?)"
                    ) from None
                js = self.js  # one shared account: no import prefix
                continue
            except NotFoundError:
                if anyio.current_time() >= idle_until:
                    raise BusError(f"no event for job {job_id} within {timeout:.0f}s") from None
                await anyio.sleep(WATCH_POLL_S)
                continue
            except NatsTimeout:
                raise BusError(f"no event for job {job_id} within {timeout:.0f}s") from None
            assert msg.seq is not None and msg.data is not None
            seq = msg.seq + 1
            idle_until = anyio.current_time() + timeout
            yield event_decoder.decode(msg.data)

    # --- operator request/reply ------------------------------------------------------

    async def request(self, verb: str, req: ApiRequest, timeout: float = 10.0) -> ApiReply:
        try:
            msg = await ask(self.nc, subjects.api(verb), encode(req), timeout, self.user)
        except NoRespondersError:
            raise NoCoordinator(f"no coordinator is answering on NATS at {self.url}") from None
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
