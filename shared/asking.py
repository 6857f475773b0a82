"""Core NATS requests that say at once when NATS permissions refuse them.

nats-server answers a publish the user may not make with ``-ERR 'Permissions Violation
for Publish to "…"'`` and drops the message; nats-py hands that only to the error
callback and ``nc.last_error``, so a refused request would just time out. :func:`ask`
sends a PING right after the request: the server answers in order, so once the PONG is
back the refusal (if any) is in ``last_error``, and :class:`PermissionRefused` names the
subject and the user instead of a timeout. Used by :class:`shared.bus.Bus`.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import FlushTimeoutError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from shared import subjects
from shared.errors import BusError
from shared.wire.base import encode
from shared.wire.browse import AgentApiReply, AgentApiRequest, agent_reply_decoder

REFUSAL_POLL_S = 0.25


class PermissionRefused(BusError):
    """NATS itself refused to carry a request: this user may not publish there."""

    code = "bus.permission"
    retryable = False

    def __init__(self, subject: str, user: str | None, why: str = "") -> None:
        self.subject = subject
        self.user = user
        who = f"user {user}" if user else "this NATS user"
        why = why or "its NATS permissions do not allow it (see `nats-config --operators`)"
        super().__init__(f"NATS refused {subject} for {who}: {why}")


def refuses(err: BaseException | None, subject: str) -> bool:
    """Whether ``err`` is the server's refusal to let this client publish ``subject``."""
    text = str(err).lower()
    return "permissions violation for publish" in text and f'"{subject.lower()}"' in text


async def ask(nc: NATS, subject: str, data: bytes, timeout: float, user: str | None) -> Msg:
    """A request with an inbox of its own: subscribe, publish, PING; a refusal is known
    when the PONG is back. NoRespondersError and nats' TimeoutError as ``nc.request``."""
    before = nc.last_error
    deadline = anyio.current_time() + timeout
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, data, reply=inbox)
        try:
            await nc.flush(timeout=max(1, int(timeout)))
        except (NatsTimeout, FlushTimeoutError):
            pass  # waiting for the answer below says what happened
        while True:  # the refusal is normally known at the PONG; looked for until the end
            err = nc.last_error
            if err is not None and err is not before and refuses(err, subject):
                raise PermissionRefused(subject, user)
            left = deadline - anyio.current_time()
            if left <= 0:
                raise NatsTimeout
            try:
                msg = await sub.next_msg(timeout=min(REFUSAL_POLL_S, left))
                break
            except NatsTimeout:
                continue
        if msg.headers and msg.headers.get("Status") == "503":
            raise NoRespondersError
        return msg
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(NatsError):
            await sub.unsubscribe()  # gone already after its one message: nothing to do


class Connected(Protocol):
    """What :func:`ask_agent` needs of a :class:`shared.bus.Bus`."""

    nc: NATS
    url: str
    user: str | None


async def ask_agent(
    bus: Connected, agent: str, verb: str, req: AgentApiRequest, timeout: float = 30.0
) -> AgentApiReply:
    """One request to an agent's own API (``mosaic.agentapi.<agent>.<verb>``)."""
    subject = subjects.agentapi(agent, verb)
    try:
        msg = await ask(bus.nc, subject, encode(req), timeout, bus.user)
    except NoRespondersError:
        raise BusError(
            f"agent {agent} is not answering on NATS at {bus.url} (is it running, with a "
            "key that can read? a write-only agent cannot browse)"
        ) from None
    except NatsTimeout:
        raise BusError(f"agent {agent} did not answer within {timeout:.0f}s") from None
    reply: AgentApiReply = agent_reply_decoder.decode(msg.data)
    return reply
