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


# --- permissions (added with mosaic/natsconfig.py) -------------------------------------
#
# The subjects each NATS user may use, as nats-server permission lists. Worked out
# against nats-server 2.15 and nats-py 2.16 by denying everything and adding back what
# the real calls needed (tests/test_nats_security.py proves the sets both work and
# keep agents apart). An agent gets its own inbox prefix: with the shared ``_INBOX.>``
# every agent could subscribe to the inbox that another agent's jobs are delivered to.

JS_API = "$JS.API"


def agent_inbox(agent: str) -> str:
    """Inbox prefix of one agent's connection: pull consumers deliver jobs there."""
    return f"_INBOX_{check_token('agent name', agent)}"


def agent_publish_allow(agent: str) -> list[str]:
    """What an agent may publish: its events, and the JetStream API calls for its own
    consumer (look up, create with its own filter, pull, ack) and for checking that the
    streams exist. It cannot create or change streams, nor touch any other consumer."""
    durable = agent_consumer(agent)
    return [
        f"{PREFIX}.event.{check_token('agent name', agent)}.>",
        heartbeat(agent),
        f"{JS_API}.STREAM.INFO.{JOBS_STREAM}",
        f"{JS_API}.STREAM.INFO.{EVENTS_STREAM}",
        f"{JS_API}.CONSUMER.INFO.{JOBS_STREAM}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{JOBS_STREAM}.{durable}.{job(agent)}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{durable}",
        f"$JS.ACK.{JOBS_STREAM}.{durable}.>",
    ]


def agent_subscribe_allow(agent: str) -> list[str]:
    """What an agent may subscribe to: only its own inboxes (replies and pulled jobs)."""
    return [f"{agent_inbox(agent)}.>"]


def coordinator_allow() -> list[str]:
    """The coordinator publishes jobs, serves the API, manages streams and holds the
    leader lease (a KV bucket, ``$KV.…``): all of ours."""
    return [f"{PREFIX}.>", "$JS.>", "$KV.>", "_INBOX.>"]


def operator_publish_allow() -> list[str]:
    """Operator CLIs send API requests and follow one job's events with an ephemeral
    ordered consumer on the events stream (``watch_job``)."""
    return [
        f"{PREFIX}.api.>",
        f"{JS_API}.STREAM.NAMES",
        f"{JS_API}.STREAM.INFO.{EVENTS_STREAM}",
        f"{JS_API}.CONSUMER.CREATE.{EVENTS_STREAM}",  # ordered consumers: no name
        f"{JS_API}.CONSUMER.CREATE.{EVENTS_STREAM}.>",
        f"{JS_API}.CONSUMER.DELETE.{EVENTS_STREAM}.>",
        f"{JS_API}.CONSUMER.INFO.{EVENTS_STREAM}.>",
        f"$JS.FC.{EVENTS_STREAM}.>",
    ]


def operator_subscribe_allow() -> list[str]:
    return ["_INBOX.>"]


# --- coordinator lease (added with coordinator/leader.py) -------------------------------
#
#     KV bucket mosaic_lease, key ``leader`` = "<coordinator name>/<instance id>"
#
# Entries expire after the bucket's ttl, so a dead coordinator's lease ends by itself.

LEADER_BUCKET = "mosaic_lease"


# --- heartbeats (added with agent/heartbeat.py) -----------------------------------------
#
#     mosaic.heartbeat.<agent>                  one agent is alive  (stream MOSAIC_HEARTBEATS)
#
# Published with core NATS (no ack to wait for, so a slow server never stalls an agent);
# the stream keeps only the last message per agent, so a coordinator that starts or takes
# over reads every agent's last heartbeat at once. The coordinator creates the stream.

HEARTBEATS_STREAM = "MOSAIC_HEARTBEATS"


def heartbeats_all() -> str:
    return f"{PREFIX}.heartbeat.*"


def heartbeat(agent: str) -> str:
    return f"{PREFIX}.heartbeat.{check_token('agent name', agent)}"


# --- audit trail (added with coordinator/audit.py) --------------------------------------
#
#     mosaic.audit.<action>                     who did what       (stream MOSAIC_AUDIT, limits)
#
# Published by the coordinator only, after the catalog's append-only table has the entry.

AUDIT_STREAM = "MOSAIC_AUDIT"


def audit_all() -> str:
    return f"{PREFIX}.audit.>"


def audit(action: str) -> str:
    return f"{PREFIX}.audit.{check_token('audit action', action)}"
