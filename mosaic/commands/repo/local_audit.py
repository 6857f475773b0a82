"""Audit entries for what the repository tools change beside an agent.

``repo keys rotate|rewrap|export|write-only-export`` and ``repo prune`` run on an agent's
host with that agent's config and change keys or delete backups without the
coordinator. Each change is reported as a ``local_action`` event on the agent's own
event subject — what the agent's NATS permissions allow anyway — so it is stored in the
events stream at once and reaches the coordinator's audit trail when it reads the
stream, also if it is down right now. The change itself is done either way: when NATS
cannot be reached, one line on stderr says it was not audited.

An event is published only to a NATS server somebody chose: ``nats_url`` must be set in
the agent's file (its default, a NATS on loopback, may be anyone's server on a host
that runs only the repository tools), and the connection must be authenticated (user +
password file, NKEY or TLS) unless ``audit_plain_nats = true`` says a plain server is
trusted. Otherwise the event stays local: one line on stderr carries it.
"""

from __future__ import annotations

import os
import re

from rich.console import Console

from mosaic.ui.display import who
from shared import subjects
from shared.config.agent import AgentConfig
from shared.config.load import is_set
from shared.errors import MosaicError
from shared.vocab import utcnow
from shared.wire.events import LocalAction, LocalActionKind

CONNECT_TIMEOUT_S = 3.0  # a tool waits this long for an unreachable NATS, then says so


async def report(
    cfg: AgentConfig,
    action: LocalActionKind,
    detail: str,
    err: Console,
    *,
    target: str = "",
    repository_id: str = "",
) -> bool:
    """Publish the action for the audit trail; False (and one line on ``err``) if not."""
    event = LocalAction(
        job_id=f"local-{action.replace('_', '-')}-{os.urandom(6).hex()}",
        agent=cfg.name,
        action=action,
        actor=who(),
        target=target,
        repository_id=repository_id,
        detail=detail,
        at=utcnow(),
    )
    what = action.replace("_", " ")
    reason = _why_not_publish(cfg)
    if reason is not None:
        err.print(
            f"mosaic-backup: warning: {what} is done but not audited on NATS ({reason}); "
            f"the audit event stays local: {event.actor}: {detail}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        return False
    # the NATS client is imported only now: repository tools start without it
    from nats.errors import Error as NatsError

    from shared.bus import Bus

    try:
        bus = await Bus.connect_with(
            cfg,
            name=f"repo-tool-{cfg.name}",
            timeout=min(cfg.connect_timeout_s, CONNECT_TIMEOUT_S),
            inbox_prefix=subjects.agent_inbox(cfg.name),
        )
        try:
            await bus.publish_event(event)
        finally:
            await bus.aclose()
    except (MosaicError, NatsError) as exc:
        err.print(
            f"mosaic-backup: warning: {what} is done but not audited: {exc or type(exc).__name__}",
            highlight=False,
            soft_wrap=True,
        )
        return False
    return True


def _why_not_publish(cfg: AgentConfig) -> str | None:
    """Why the event must not go to ``cfg.nats_url``, or None when it may."""
    if not is_set(cfg, "nats_url"):
        return "nats_url is not set in the agent's config, and its default is nobody's choice"
    authenticated = (
        (cfg.nats_user is not None and cfg.nats_password_file is not None)
        or cfg.nats_nkey_seed_file is not None
        or cfg.nats_tls_ca is not None
    )
    if authenticated or cfg.audit_plain_nats:
        return None
    url = re.sub(r"//[^/@]*@", "//", cfg.nats_url)  # never echo credentials
    return (
        f"{url} would be reached without credentials or TLS: set nats_user and "
        "nats_password_file, nats_nkey_seed_file or nats_tls_ca, or audit_plain_nats = true "
        "for a trusted server"
    )
