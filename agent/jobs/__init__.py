"""The agent's jobs: one module per job kind, looked up in :mod:`agent.jobs.table`.

Every handler gets the same :class:`agent.jobs.context.JobContext` and returns one
result event; the daemon (:mod:`agent.runner`) only moves jobs and events over NATS.
"""
