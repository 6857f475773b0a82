"""``coordinator.toml``: the catalog, datasets and schedules, retention, alerts,
maintenance, HTTP."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from croniter import CroniterError, croniter

from shared.config.auth import AuthConfig
from shared.config.inventory import CoverageConfig
from shared.config.nats import NatsClientConfig
from shared.config.notify import NotifyRoute, PingConfig
from shared.config.types import Name, PositiveFloat
from shared.config.web import TlsListener, WebConfig
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
    - ``window``: the maintenance window, ``"HH:MM-HH:MM"`` in ``timezone`` (an end
      before the start runs past midnight: ``"22:00-02:00"``). A run still going at its
      window's end, or finished after it, raises ``window_exceeded``
      (coordinator/windows.py). Every time the cron fires must lie inside it (checked
      here, with the fix in the message): a window that starts after the run cannot be
      kept.
    """

    cron: str
    timezone: str = "UTC"
    backup_type: BackupType
    tier: Tier = "daily"
    grace_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    window: str | None = None

    def __post_init__(self) -> None:
        if self.window is None:
            return
        start, end = parse_window(self.window)
        outside = _first_fire_outside(self.cron, start, end)
        if outside is None:
            return
        shown, fires = _hhmm(outside), f"the run at {_hhmm(outside)} (cron {self.cron!r})"
        if start < end:
            raise ValueError(
                f"field window: {self.window!r} does not contain {fires}, and a run must "
                f"start inside its window (widen the window to include {shown}, or change "
                "the cron)"
            )
        # written the wrong way round: the swapped window is the shorter one, and fits
        swapped = f"{_hhmm(end)}-{_hhmm(start)}"
        fix = (
            f'did you mean "{swapped}"?'
            if start - end < 12 * 60 and _first_fire_outside(self.cron, end, start) is None
            else f"widen the window to include {shown}, or change the cron"
        )
        raise ValueError(
            f"field window: {self.window!r} ends before it starts, so it runs from "
            f"{_hhmm(start)} past midnight to {_hhmm(end)} the next day, and {fires} is "
            f"outside it ({fix})"
        )


_WINDOW = re.compile(
    r"^\s*([01]?[0-9]|2[0-3]):([0-5][0-9])\s*-\s*([01]?[0-9]|2[0-3]):([0-5][0-9])\s*$"
)


def parse_window(text: str) -> tuple[int, int]:
    """A schedule's ``window`` as (start, end) minutes after midnight; end < start wraps
    past midnight. Raises ValueError in the ``field window: …`` form that load reports."""
    m = _WINDOW.match(text)
    if m is None:
        raise ValueError(
            f'field window: {text!r} is not a time range; write "HH:MM-HH:MM" in the '
            'schedule\'s time zone (window = "02:00-04:00"; "22:00-02:00" runs past midnight)'
        )
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(
            f"field window: {text!r} starts and ends at {_hhmm(start)}, which leaves no time "
            'at all (give it an end, window = "02:00-04:00", or leave window out for no limit)'
        )
    return start, end


def in_window(minute: int, start: int, end: int) -> bool:
    """Whether ``minute`` (after midnight) is inside ``[start, end)``, wrapping past
    midnight when ``end < start``."""
    return start <= minute < end if start < end else minute >= start or minute < end


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _first_fire_outside(cron: str, start: int, end: int) -> int | None:
    """The earliest wall-clock minute ``cron`` fires at that is outside the window, or
    None. A cron that does not parse is left to load's check of ``cron``."""
    try:
        fields = croniter.expand(cron)[0]
    except CroniterError:
        return None
    minutes = range(60) if fields[0] == ["*"] else [int(x) for x in fields[0]]
    hours = range(24) if fields[1] == ["*"] else [int(x) for x in fields[1]]
    return next(
        (
            h * 60 + m
            for h in sorted(hours)
            for m in sorted(minutes)
            if not in_window(h * 60 + m, start, end)
        ),
        None,
    )


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


class HttpConfig(TlsListener, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[http]``: the read-only status API and Prometheus ``/metrics``.

    - ``listen``: the address to bind; loopback by default.
    - ``port``: TCP port, 1 to 65535; 0 picks a free port (tests).
    - ``anonymous``: answer without an API token. Off by default: every request presents
      ``Authorization: Bearer <token>`` (``mosaic-backup tokens create``; any role).
    - ``tls_cert`` / ``tls_key`` / ``tls13_only``: HTTPS, as for ``[web]``.
    """

    listen: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8470
    anonymous: bool = False


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
    - ``host_drill_cron``: a whole-host disaster-recovery drill of every host in turn
      (``mosaic-backup drill host``), quarterly by default (the 1st of every third month,
      04:00); ``""`` turns it off.
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
    host_drill_cron: str = "0 4 1 */3 *"

    def __post_init__(self) -> None:
        if not self.host_drill_cron:
            return
        try:
            croniter(self.host_drill_cron)
        except CroniterError as exc:
            raise ValueError(
                f"field host_drill_cron: {self.host_drill_cron!r} is not a valid cron "
                f'expression ({exc}); see `man 5 crontab`, or "" to turn it off'
            ) from None


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
    # Copies JetStream keeps of every stream and of the lease bucket (1..5; at most the
    # servers in the NATS cluster). Unset: min(3, servers in the cluster of the server
    # the coordinator connected to). An existing stream is raised or lowered to it at
    # start (shared/replicas.py).
    stream_replicas: int | None = None
    # Coverage: what agents' inventories may leave without a dataset, certificate
    # expiry warnings (shared/config/inventory.py, coordinator/coverage.py).
    coverage: CoverageConfig = CoverageConfig()
    # Alert notifications through Apprise, and dead-man's-switch pings per dataset
    # (shared/config/notify.py); none unless the file has ``[[notify]]`` / ``[[pings]]``.
    notify: list[NotifyRoute] = []
    pings: list[PingConfig] = []
    # The operators' console (coordinator/web/, ``mosaic-backup console run``); off unless
    # the file has a ``[web]`` table.
    web: WebConfig | None = None
    # Users, sessions, login lockout, MFA (shared/config/auth.py, coordinator/auth/).
    auth: AuthConfig = AuthConfig()

    def __post_init__(self) -> None:
        super().__post_init__()  # nats_url: every server of the list is a NATS URL
        n = self.stream_replicas
        if n is not None and not 1 <= n <= 5:
            raise ValueError(
                f"field stream_replicas: {n} is outside 1..5 (JetStream keeps 1 to 5 copies); "
                "write 3 for a 3-server NATS cluster, or leave it unset"
            )
