"""Every NATS subject and stream name of mosaic-backup, in one place.

Nothing else builds subject strings by hand. Tokens that end up in subjects (agent
names, job ids, dataset names) are checked by :func:`check_token` so a dot or a
wildcard can never change what a subject matches.

Layout::

    mosaic.job.<agent>                        jobs for one agent   (stream MOSAIC_JOBS, work queue)
    mosaic.event.<agent>.<job_id>.<kind>      what happened        (stream MOSAIC_EVENTS, limits)
    mosaic.api.<verb>                         operator request/reply (core NATS, no stream)
"""

from __future__ import annotations

import re

PREFIX = "mosaic"
JOBS_STREAM = "MOSAIC_JOBS"
EVENTS_STREAM = "MOSAIC_EVENTS"
COORDINATOR_EVENTS_CONSUMER = "coordinator"
COORDINATOR_QUEUE = "coordinator"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it is safe as one subject token, else raise ValueError."""
    if not _TOKEN.match(value):
        raise ValueError(
            f"{kind} {value!r} may only contain letters, digits, '-' and '_' (1-128 characters)"
        )
    return value


def jobs_all() -> str:
    return f"{PREFIX}.job.>"


def job(agent: str) -> str:
    return f"{PREFIX}.job.{check_token('agent name', agent)}"


def events_all() -> str:
    return f"{PREFIX}.event.>"


def event(agent: str, job_id: str, kind: str) -> str:
    return (
        f"{PREFIX}.event.{check_token('agent name', agent)}."
        f"{check_token('job id', job_id)}.{check_token('event kind', kind)}"
    )


def events_of_job(job_id: str) -> str:
    return f"{PREFIX}.event.*.{check_token('job id', job_id)}.*"


def api(verb: str) -> str:
    return f"{PREFIX}.api.{check_token('api verb', verb)}"


def agent_consumer(agent: str) -> str:
    """Durable consumer name of one agent on the jobs stream."""
    return f"agent-{check_token('agent name', agent)}"


# --- alerts (added with coordinator/alerter.py) ----------------------------------------
#
#     mosaic.alert.<rule>.<dataset>             alert transitions   (stream MOSAIC_ALERTS, limits)
#
# A stream of their own rather than ``mosaic.event.…``: the coordinator's durable
# consumer reads every ``mosaic.event.>`` message as a job event, and alerts are not.

ALERTS_STREAM = "MOSAIC_ALERTS"


def alerts_all() -> str:
    return f"{PREFIX}.alert.>"


def alert(rule: str, dataset: str) -> str:
    return f"{PREFIX}.alert.{check_token('alert rule', rule)}.{check_token('dataset', dataset)}"
