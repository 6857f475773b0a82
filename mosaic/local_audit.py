"""Audit entries for what the repository tools change beside an agent.

``repo keys rotate|rewrap|export|write-only-export`` and ``repo prune`` run on an agent's
host with that agent's config and change keys or delete backups without the
coordinator. Each change is reported as a ``local_action`` event on the agent's own
event subject — what the agent's NATS permissions allow anyway — so it is stored in the
events stream at once and reaches the coordinator's audit trail when it reads the
stream, also if it is down right now. The change itself is done either way: when NATS
cannot be reached, one line on stderr says it was not audited.
"""

from __future__ import annotations

import os

from rich.console import Console

from mosaic.display import who
from shared import subjects
from shared.config import AgentConfig
from shared.errors import MosaicError
from shared.messages import LocalAction, LocalActionKind, utcnow
from shared.nats_credentials import nats_password, nats_tls

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
    # the NATS client is imported only now: repository tools start without it
    from nats.errors import Error as NatsError

    from shared.bus import Bus

    try:
        bus = await Bus.connect(
            cfg.nats_url,
            name=f"repo-tool-{cfg.name}",
            timeout=min(cfg.connect_timeout_s, CONNECT_TIMEOUT_S),
            user=cfg.nats_user,
            password=nats_password(cfg),
            inbox_prefix=subjects.agent_inbox(cfg.name),
            tls=nats_tls(cfg),
            nkeys_seed=cfg.nats_nkey_seed_file,
        )
        try:
            await bus.publish_event(event)
        finally:
            await bus.aclose()
    except (MosaicError, NatsError) as exc:
        err.print(
            f"mosaic-backup: warning: {action.replace('_', ' ')} is done but not audited: "
            f"{exc or type(exc).__name__}",
            highlight=False,
            soft_wrap=True,
        )
        return False
    return True
