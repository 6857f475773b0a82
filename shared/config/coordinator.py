"""``coordinator.toml``: the catalog, datasets and schedules, retention, alerts,
maintenance, HTTP."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from shared.config.nats import NatsClientConfig
from shared.config.types import Name, PositiveFloat
from shared.vocab import BackupType, Tier
from shared.wire.sources import Source

TargetTier = Literal["local", "remote", "archive"]


# The strategy's retention table: tier → target tier → how long.
DEFAULT_RETENTION: dict[Tier, dict[TargetTier, str]] = {
    "daily": {"local": "7d", "remote": "14d", "archive": "0d"},
    "weekly": {"local": "4w", "remote": "8w", "archive": "0d"},
    "monthly": {"local": "3m", "remote": "12m", "archive": "24m"},
    "yearly": {"local": "1y", "remote": "2y", "archive": "7y"},
    "config": {"local": "30d", "remote": "90d", "archive": "1y"},
    "translog": {"local": "3d", "remote": "7d", "archive": "0d"},
}


class ScheduleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[datasets.NAME.schedules]]``: when a dataset is backed up, and as which tier.

    - ``cron``: five fields (minute hour day-of-month month day-of-week), read in
      ``timezone``. When day-of-month and day-of-week are both restricted a time must
      match both (classic cron ORs them), so ``0 0 1-7 * sun`` is the first Sunday.
    - ``timezone``: an IANA name (``Europe/Berlin``); DST is handled by the time zone.
    - ``tier``: the retention tier of the backups this schedule makes.
    - ``grace_s``: a run missed while the coordinator was down still runs at start if it
      is at most this old; older ones are reported as missed and skipped. Of several
      such runs only the newest runs, and never one older than the dataset's first
      appearance in the config. At least ``scheduler_interval_s`` (checked at load).
    """

    cron: str
    timezone: str = "UTC"
    backup_type: BackupType
    tier: Tier = "daily"
    grace_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0


class TierRetention(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long one tier's backups stay on each kind of target: ``N`` + ``d`` (days), ``w``
    (weeks), ``m`` (calendar months) or ``y`` (years); ``"0d"`` keeps none there. A field
    left out keeps the strategy's default (:data:`DEFAULT_RETENTION`)."""

    local: str | None = None
    remote: str | None = None
    archive: str | None = None


KEEP_FORMAT = re.compile(r"^([0-9]{1,5})([dwmy])$")


class RetentionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[retention.TIER]``: overrides of :data:`DEFAULT_RETENTION`, per target tier."""

    daily: TierRetention = TierRetention()
    weekly: TierRetention = TierRetention()
    monthly: TierRetention = TierRetention()
    yearly: TierRetention = TierRetention()
    config: TierRetention = TierRetention()
    translog: TierRetention = TierRetention()

    def keep(self, tier: Tier, target_tier: TargetTier) -> str:
        """How long ``tier`` backups stay on ``target_tier`` targets (``"14d"``)."""
        value: str | None = getattr(getattr(self, tier), target_tier)
        return value if value is not None else DEFAULT_RETENTION[tier][target_tier]


class DatasetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One thing to back up: which agent, what source, to which of its targets."""

    agent: Name
    target: Name
    source: Source
    schedules: list[ScheduleConfig] = []


class CatalogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``url``: ``sqlite:///path/catalog.db`` (default) or ``postgresql://…``."""

    url: str = "sqlite:///var/lib/mosaic-backup/catalog.db"


class HttpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[http]``: the read-only status API and Prometheus ``/metrics``.

    - ``listen``: the address to bind; the default keeps it on loopback, because the API
      has no authentication (put a reverse proxy in front to expose it).
    - ``port``: TCP port, 1 to 65535; 0 picks a free port (tests).
    """

    listen: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8470


class AlertsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[alerts]``: how the coordinator evaluates alert rules and where it sends them.

    - ``webhook_url``: an http(s) URL that receives alerts in Alertmanager's JSON format
      (Alertmanager's ``/api/v2/alerts``, or any receiver of that format); unset: alerts
      are only published on NATS and shown by ``GET /api/v1/alerts``.
    - ``interval_s``: how often the rules are evaluated; a failed backup alerts within
      this time.
    - ``duration_factor``: a backup taking more than this many times the average of the
      previous ones of its type raises ``duration_anomaly``.
    - ``missing_grace_s``: how long after a scheduled time a successful backup may still
      arrive before ``backup_missing`` fires.
    - ``storage_min_free``: a target with less free space than this fraction (from its
      agent's heartbeats) raises ``storage_low``.
    - ``disabled``: rule names never to raise (``not_compliant`` on a deliberately
      single-copy setup, say); the others still run.
    """

    webhook_url: str | None = None
    interval_s: PositiveFloat = 60.0
    duration_factor: Annotated[float, msgspec.Meta(gt=1)] = 2.0
    missing_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    storage_min_free: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.20
    disabled: list[str] = []


class MaintenanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[maintenance]``: verify, prune, replication and restore drills that the
    coordinator orders on a schedule and agents run (off unless the table exists).

    Every ``*_cron`` is five fields read in ``timezone`` (as in schedules); ``""`` turns
    that task off. The defaults are the strategy's: verify weekly (Sunday 04:00) reading
    a random ``verify_subset`` percent of the packs, prune daily (04:30, after the
    nightly backups), replicate hourly (at :15), a restore drill of every dataset monthly
    (the 1st at 05:00).

    - ``agent``: the agent in the maintenance role (it holds the credentials that may
      delete) that runs verify, prune and replicate for every target; unset: the agent
      of the datasets stored on that target.
    - ``target_tiers``: target name → ``local``/``remote``/``archive``, the column of
      ``[retention]`` that prune applies there (default ``local``).
    - ``replicate``: source target → destination targets (names in the agent's config).
    - ``prune_dry_run``: report what prune would remove, remove nothing.
    - ``gc_margin_s``: how long garbage collection waits before deleting (engine.maintenance.prune).
    - ``drill_scratch``: folder on the agent where drills restore (default: its temp dir).
    - ``grace_s``: a run missed while the coordinator was down still runs if this recent
      (the newest per task only); at least ``scheduler_interval_s`` (checked at load).
    """

    timezone: str = "UTC"
    grace_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    verify_cron: str = "0 4 * * sun"
    verify_subset: Annotated[float, msgspec.Meta(gt=0, le=100)] = 5.0
    prune_cron: str = "30 4 * * *"
    prune_dry_run: bool = False
    gc_margin_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    replicate_cron: str = "15 * * * *"
    replicate: dict[Name, list[Name]] = {}
    drill_cron: str = "0 5 1 * *"
    drill_scratch: str = ""
    agent: Name | None = None
    target_tiers: dict[Name, TargetTier] = {}


class CoordinatorConfig(NatsClientConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``coordinator.toml``: NATS (the fields of :class:`NatsClientConfig`), the catalog
    and the datasets."""

    name: Name = "coordinator"
    catalog: CatalogConfig = CatalogConfig()
    datasets: dict[Name, DatasetConfig] = {}
    retention: RetentionConfig = RetentionConfig()
    # How often the scheduler looks for runs that came due (seconds); every grace_s must
    # be at least this (shared/config/load.py).
    scheduler_interval_s: PositiveFloat = 30.0
    # The HTTP status API; off unless the file has an ``[http]`` table, so that
    # several coordinators (tests, quickstart) on one host never fight over a port.
    http: HttpConfig | None = None
    # Alert rules and sinks (see AlertsConfig); on by default, with no webhook.
    alerts: AlertsConfig = AlertsConfig()
    # Scheduled verify, prune, replication and restore drills (MaintenanceConfig); off
    # unless the file has a ``[maintenance]`` table.
    maintenance: MaintenanceConfig | None = None
    # Active/standby: coordinators on one NATS share a lease (coordinator/leader.py);
    # only its holder schedules and alerts. A standby takes over at most about this
    # long (plus one poll, a sixth of it) after the active one dies; between 1 and 60.
    leader_ttl_s: Annotated[float, msgspec.Meta(ge=1, le=60)] = 6.0
