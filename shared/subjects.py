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


# --- accounts and permissions (mosaic/natsconfig.py, docs/security.md) ----------------
#
# One NATS account per agent, one for the coordinator (it owns every stream, consumer
# and KV bucket) and one for operators. Accounts share no subjects: an agent account
# sees exactly the services the coordinator account exports to it, listed below.
# A service import rewrites the reply subject of every request into a private
# ``_R_.…`` subject that leads back to the requester's own account, so a reply can
# never be aimed at the coordinator account's JetStream API (the redirection hole of
# issue 15). The JetStream API is imported under ``JS_IMPORT_PREFIX`` because an
# account without JetStream answers ``$JS.API.>`` itself ("not enabled").

JS_API = "$JS.API"
JS_IMPORT_PREFIX = "JS.mosaic.API"
COORDINATOR_ACCOUNT = "MOSAIC"
OPERATOR_ACCOUNT = "OPERATORS"


def agent_account(agent: str) -> str:
    return f"AGENT_{check_token('agent name', agent)}"


def agent_inbox(agent: str) -> str:
    """Inbox prefix of one agent's connection: pull consumers deliver jobs there."""
    return f"_INBOX_{check_token('agent name', agent)}"


class ServiceImport:
    """One subject the coordinator account exports to one importing account.

    ``subject`` is the name in the coordinator account, ``local`` the name the importer
    publishes to; ``streamed`` marks a request answered by many messages (a pull)."""

    __slots__ = ("local", "streamed", "subject")

    def __init__(self, subject: str, local: str | None = None, *, streamed: bool = False):
        self.subject = subject
        self.local = local or subject
        self.streamed = streamed


def _js(api_call: str, *, streamed: bool = False) -> ServiceImport:
    return ServiceImport(
        f"{JS_API}.{api_call}", f"{JS_IMPORT_PREFIX}.{api_call}", streamed=streamed
    )


def agent_imports(agent: str) -> list[ServiceImport]:
    """Everything an agent does on NATS (agent/runner.py, agent/heartbeat.py,
    mosaic/local_audit.py): pull and look up its own consumer, which the coordinator
    creates, ack its jobs, publish its events, heartbeats and inventory. Nothing else exists in
    its account: no stream, no consumer creation, no stream info, no KV."""
    durable = agent_consumer(agent)
    return [
        _js(f"CONSUMER.MSG.NEXT.{JOBS_STREAM}.{durable}", streamed=True),
        _js(f"CONSUMER.INFO.{JOBS_STREAM}.{durable}"),
        ServiceImport(f"$JS.ACK.{JOBS_STREAM}.{durable}.>"),
        ServiceImport(f"{PREFIX}.event.{check_token('agent name', agent)}.>"),
        ServiceImport(heartbeat(agent)),
        ServiceImport(inventory(agent)),
    ]


def operator_imports() -> list[ServiceImport]:
    """Operator CLIs send API requests (the coordinator checks roles) and read stored
    events of the job they follow (``Bus.watch_job``): one read-only JetStream call."""
    return [ServiceImport(f"{PREFIX}.api.>"), _js(f"DIRECT.GET.{EVENTS_STREAM}")]


def agent_publish_allow(agent: str) -> list[str]:
    """Exactly the imported subjects (permissions inside the agent's own account are a
    second fence: anything else it publishes would reach nobody anyway)."""
    return [i.local for i in agent_imports(agent)]


def agent_subscribe_allow(agent: str) -> list[str]:
    """What an agent may subscribe to: only its own inboxes (replies and pulled jobs)."""
    return [f"{agent_inbox(agent)}.>"]


def coordinator_allow() -> list[str]:
    """The coordinator publishes jobs, serves the API, manages streams and holds the
    leader lease (a KV bucket, ``$KV.…``): all of ours."""
    return [f"{PREFIX}.>", "$JS.>", "$KV.>", "_INBOX.>"]


def coordinator_publish_deny() -> list[str]:
    """No client of the coordinator account deletes or purges a stream: the coordinator
    never does, so a stolen coordinator password cannot wipe the audit trail or the
    pending jobs either (an administrator removes streams with the system account)."""
    return [f"{JS_API}.STREAM.DELETE.>", f"{JS_API}.STREAM.PURGE.>"]


def operator_publish_allow() -> list[str]:
    return [i.local for i in operator_imports()]


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


# --- inventory (added with agent/inventory/ and coordinator/coverage.py) ---------------
#
#     mosaic.inventory.<agent>                  what is on one host (stream MOSAIC_INVENTORY)
#
# Published by the agent with JetStream acks (retried until stored: it is sent only once
# an hour); the stream keeps the newest message per agent, so every coordinator reads
# every agent's last inventory at once. The coordinator creates the stream.

INVENTORY_STREAM = "MOSAIC_INVENTORY"


def inventories_all() -> str:
    return f"{PREFIX}.inventory.*"


def inventory(agent: str) -> str:
    return f"{PREFIX}.inventory.{check_token('agent name', agent)}"


# --- agent API (added with agent/browse.py, the console's file browser) ----------------
#
#     mosaic.agentapi.<agent>.<verb>            ask one agent      (core NATS request/reply)
#
# Served by the agent itself (it holds the key; the coordinator and the console never
# decrypt). With ``nats-config`` accounts the agent's account exports exactly its own
# ``mosaic.agentapi.<agent>.>`` to the coordinator's account, and the agent's user may
# subscribe to nothing else: an agent can never answer another agent's requests.

AGENT_API_VERBS = ("tree", "chunk")


def agentapi(agent: str, verb: str) -> str:
    return f"{PREFIX}.agentapi.{check_token('agent name', agent)}.{check_token('api verb', verb)}"


def agentapi_all(agent: str) -> str:
    """Every request to one agent (its subscription, its account's export)."""
    return f"{PREFIX}.agentapi.{check_token('agent name', agent)}.>"


def agent_api_subscribe_allow(agent: str) -> list[str]:
    """What an agent's user may subscribe to beside its inboxes: its own agent API."""
    return [agentapi_all(agent)]


def operator_role_publish_allow(verbs: list[str]) -> list[str]:
    """An operator-account user of one role (``nats-config --viewers/--operators``):
    only the API verbs of its role (coordinator/auth/roles.py) and the read-only
    events lookup, so NATS itself refuses a viewer's ``restore``."""
    return [api(v) for v in verbs] + [_js(f"DIRECT.GET.{EVENTS_STREAM}").local]
