"""Typed TOML configuration for the agent and the coordinator.

Files are decoded straight into frozen msgspec Structs, so a wrong field is reported
with its path (``targets.offsite.bucket``), the file, what was expected and how to fix
it, in one line. Environment variables are read only by the entry points.
"""

from __future__ import annotations

import re
import tomllib
import weakref
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec
import msgspec.inspect as mi
from croniter import CroniterBadDateError, CroniterError, croniter

from shared.config_fields import UnknownField, check_unknown
from shared.errors import ConfigError
from shared.nats_credentials import check_nkey_seed, nats_tls
from shared.subjects import check_token
from shared.vocab import BackupType, Tier
from shared.wire.sources import Source

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
T = TypeVar("T")


class LocalTargetConfig(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="type",
    tag="local",
):
    """A repository in a folder on a local or mounted disk; ``path`` is absolute (an
    empty or relative one would put the repository wherever the agent happens to run)."""

    path: str
    # The agent never deletes or replaces an object here (prune fails at once; leases are
    # renewed and released as new objects). Pair it with ``chattr +a`` on the folders
    # (README: append-only targets); prune runs on an agent without this flag.
    append_only: bool = False
    media: str = "disk"
    location: Literal["onsite", "offsite"] = "onsite"
    tier: Literal["local", "remote", "archive"] = "local"

    def __post_init__(self) -> None:
        if not self.path.strip():
            raise ValueError(
                "field path: is empty; write the repository folder as an absolute path "
                '(path = "/srv/backup/repository")'
            )
        if not self.path.startswith("/"):
            raise ValueError(
                f"field path: {self.path!r} is relative; write it as an absolute path "
                '(path = "/srv/backup/repository")'
            )


class S3TargetConfig(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="type",
    tag="s3",
):
    """A repository under a prefix of an S3-compatible bucket."""

    bucket: Annotated[str, msgspec.Meta(min_length=3, max_length=63)]
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    storage_class: str | None = None
    # S3 Object Lock retention given to every object written: GOVERNANCE (principals with
    # s3:BypassGovernanceRetention may still delete) or COMPLIANCE (nobody can, root
    # included, until the date). The bucket must have been created with Object Lock
    # enabled; set both fields or neither.
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = None
    # How long each object stays locked, in days from its upload (1 to 36500).
    object_lock_days: Annotated[int, msgspec.Meta(ge=1, le=36500)] | None = None

    def __repr__(self) -> str:
        """Never the secret key: configs end up in logs and tracebacks."""
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        if fields["secret_access_key"] is not None:
            fields["secret_access_key"] = "***"
        return "S3TargetConfig(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    media: str = "object"
    location: Literal["onsite", "offsite"] = "offsite"
    tier: Literal["local", "remote", "archive"] = "remote"

    def __post_init__(self) -> None:
        url = self.endpoint_url
        if url is not None and not re.match(r"^https?://[^/\s]", url):
            shown = re.sub(r"//[^/@]*@", "//", url)  # never echo credentials
            bare = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", shown)
            problem = f"{shown!r} has no scheme" if bare == shown else f"{shown!r} is not http(s)"
            raise ValueError(
                f"field endpoint_url: {problem}; write http://{bare} or https://{bare}"
            )


class SftpTargetConfig(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="type",
    tag="sftp",
):
    """A repository in a folder on an SSH server, reached over SFTP with a key.

    - ``host``, ``port``, ``user``: where to log in; only public-key login is used.
    - ``path``: the repository folder on the server (absolute, or relative to the user's
      home); created with its parents on the first write.
    - ``key_file``: the private key (unencrypted, readable by the agent).
    - ``known_hosts``: an OpenSSH known_hosts file holding the server's host key. ``None``
      means the defaults of the agent's user (``~/.ssh/known_hosts``, then
      ``/etc/ssh/ssh_known_hosts``); a host key is always verified. Tests pass an
      explicit file.
    """

    host: Annotated[str, msgspec.Meta(min_length=1)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 22
    user: Annotated[str, msgspec.Meta(min_length=1)]
    path: Annotated[str, msgspec.Meta(min_length=1)]
    key_file: Annotated[str, msgspec.Meta(min_length=1)]
    known_hosts: str | None = None
    # This user is append-only on the server (sshd ``Match User`` with ``internal-sftp -P
    # remove,…``): the agent then never deletes or replaces (uploads use plain rename,
    # leases new objects) and refuses prune jobs; prune uses a full-rights user.
    append_only: bool = False
    media: str = "disk"
    location: Literal["onsite", "offsite"] = "offsite"
    tier: Literal["local", "remote", "archive"] = "remote"


TargetConfig = LocalTargetConfig | S3TargetConfig | SftpTargetConfig


class HookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[hooks.DATASET]`` in agent.toml: shell commands around that dataset's backups.

    Hooks live in the agent's own config, never in jobs, so whoever can publish a job
    cannot make a host run a command. ``pre`` runs in order before the backup; a failure
    or a timeout fails the job (with the tail of its stderr). ``post`` runs afterwards,
    also after a failure, with MOSAIC_RESULT=success|failure; its failure is logged.
    """

    pre: list[str] = []
    post: list[str] = []
    timeout_s: PositiveFloat = 600.0


DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class AgentConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, weakref=True
):
    """``agent.toml``: who this agent is, where NATS is, its key and its targets.

    (``weakref``: :func:`is_set` remembers which keys the file itself set.)"""

    name: Name
    # The agent daemon connects here (default: a NATS on this host). The repository
    # tools publish their audit events here only when the file sets it (see
    # ``audit_plain_nats``): a default must never send them to a server nobody chose.
    nats_url: str = DEFAULT_NATS_URL
    # The repository key file, or a write-only key file (`repo keys write-only-export`):
    # with one the agent backs up but cannot restore, verify data, prune or drill.
    key_file: str
    targets: dict[Name, TargetConfig]
    ack_wait_s: PositiveFloat = 30.0
    progress_interval_s: PositiveFloat = 2.0
    connect_timeout_s: PositiveFloat = 10.0
    pack_size: Annotated[int, msgspec.Meta(ge=1 << 16, le=1 << 30)] = 4 << 20
    zstd_level: Annotated[int, msgspec.Meta(ge=1, le=22)] = 3
    # packs uploaded between index checkpoints: a killed backup re-uploads at most these
    index_every_packs: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 16
    hooks: dict[Name, HookConfig] = {}
    # Seconds between heartbeats (name, host, version, running job, targets' free space);
    # the coordinator alerts when three in a row are missing.
    heartbeat_interval_s: PositiveFloat = 30.0
    # The agent's own small state (snapshots in use, so a crashed agent removes them at
    # its next start). Created when first needed, mode 0700.
    state_dir: str = "/var/lib/mosaic-backup/agent"
    # NATS user name and a file holding only its password (``mosaic-backup nats-config``
    # writes both); the password is read when connecting and never logged. Unset: connect
    # without credentials.
    nats_user: str | None = None
    nats_password_file: str | None = None
    # Or an NKEY: a file holding only this client's seed (``SU…``, written 0600 by
    # ``mosaic-backup nats-config --nkeys DIR``); checked at load, signed per connect.
    nats_nkey_seed_file: str | None = None
    # TLS to NATS (``mosaic-backup pki`` makes these): the CA that signed the server's
    # certificate, and this client's certificate and key when the server verifies
    # clients. Unset: plain TCP (fine on loopback only).
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    # Repository tools (``repo keys …``, ``repo prune``) publish an audit event to
    # ``nats_url`` only over authenticated NATS (user + password file, NKEY, or TLS);
    # true allows plain, unauthenticated NATS too (a trusted server on loopback).
    audit_plain_nats: bool = False


TargetTier = Literal["local", "remote", "archive"]


class ScheduleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[datasets.NAME.schedules]]``: when a dataset is backed up, and as which tier.

    - ``cron``: five fields (minute hour day-of-month month day-of-week), read in
      ``timezone``. When day-of-month and day-of-week are both restricted a time must
      match both (classic cron ORs them), so ``0 0 1-7 * sun`` is the first Sunday.
    - ``timezone``: an IANA name (``Europe/Berlin``); DST is handled by the time zone.
    - ``tier``: the retention tier of the backups this schedule makes.
    - ``grace_s``: a run missed while the coordinator was down still runs at start if it
      is at most this old; older ones are reported as missed and skipped.
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


# The strategy's retention table: tier → target tier → how long.
DEFAULT_RETENTION: dict[Tier, dict[TargetTier, str]] = {
    "daily": {"local": "7d", "remote": "14d", "archive": "0d"},
    "weekly": {"local": "4w", "remote": "8w", "archive": "0d"},
    "monthly": {"local": "3m", "remote": "12m", "archive": "24m"},
    "yearly": {"local": "1y", "remote": "2y", "archive": "7y"},
    "config": {"local": "30d", "remote": "90d", "archive": "1y"},
    "translog": {"local": "3d", "remote": "7d", "archive": "0d"},
}
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
    - ``grace_s``: a run missed while the coordinator was down still runs if this recent.
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


class CoordinatorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``coordinator.toml``: NATS, the catalog and the datasets."""

    name: Name = "coordinator"
    nats_url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: PositiveFloat = 10.0
    catalog: CatalogConfig = CatalogConfig()
    datasets: dict[Name, DatasetConfig] = {}
    retention: RetentionConfig = RetentionConfig()
    # How often the scheduler looks for runs that came due (seconds).
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
    # NATS user name and a file holding only its password (``mosaic-backup nats-config``
    # writes both); the password is read when connecting and never logged. Unset: connect
    # without credentials.
    nats_user: str | None = None
    nats_password_file: str | None = None
    # Or an NKEY: a file holding only this client's seed (``SU…``, written 0600 by
    # ``mosaic-backup nats-config --nkeys DIR``); checked at load, signed per connect.
    nats_nkey_seed_file: str | None = None
    # TLS to NATS (``mosaic-backup pki`` makes these): the CA that signed the server's
    # certificate, and this client's certificate and key when the server verifies
    # clients. Unset: plain TCP (fine on loopback only).
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None


_HINTS = {
    "Expected `object`, got": "write it as a [table]",
    "matching regex": "use only letters, digits, '-' and '_'",
    "missing required field": "add it",
    "unknown field": "remove it or check its spelling",
    "Invalid value": "see the allowed values in the README's Configuration section",
}


def _name_dict_keys(raw: object, kind: type[object], path: str) -> str:
    """msgspec writes dict keys as ``[...]``; find the entry that fails and name it."""
    if "[...]" not in path or not isinstance(raw, dict):
        return path
    head, _, tail = path.partition("[...]")
    container = raw
    for part in head.strip(".").split("."):
        container = container.get(part, {}) if isinstance(container, dict) else {}
    if not isinstance(container, dict):
        return path
    for key in container:
        trial = _replace_at(raw, head.strip(".").split("."), {key: container[key]})
        try:
            msgspec.convert(trial, kind)
        except msgspec.ValidationError:
            return f"{head}.{key}{tail}"
    return path


def _replace_at(raw: dict[str, object], parts: list[str], value: object) -> dict[str, object]:
    out = dict(raw)
    if len(parts) == 1:
        out[parts[0]] = value
    else:
        inner = out.get(parts[0])
        out[parts[0]] = _replace_at(inner if isinstance(inner, dict) else {}, parts[1:], value)
    return out


# id(config) → the top-level keys its file set; entries leave with their config (weakref).
_SET_KEYS: dict[int, frozenset[str]] = {}


def is_set(cfg: AgentConfig, key: str) -> bool:
    """Whether ``cfg``'s file set the top-level ``key`` itself (not left to the default).

    A config built in code rather than loaded counts a key as set when its value is not
    the default."""
    keys = _SET_KEYS.get(id(cfg))
    if keys is not None:
        return key in keys
    field = next(f for f in msgspec.structs.fields(cfg) if f.encode_name == key)
    return bool(getattr(cfg, field.name) != field.default)


def _remember_keys(cfg: object, raw: dict[str, object]) -> None:
    if isinstance(cfg, AgentConfig):
        _SET_KEYS[id(cfg)] = frozenset(raw)
        weakref.finalize(cfg, _SET_KEYS.pop, id(cfg), None)


_TYPE_INFO: dict[type, mi.Type] = {}


# Top-level fields naming a file that a systemd unit may hand over as a credential
# (``LoadCredential=<field>:<path>``, docs/deployment.md): the unit's user cannot read
# the root-owned 0600 original, so the copy systemd puts in $CREDENTIALS_DIRECTORY
# under the field's name is read instead.
CREDENTIAL_FIELDS = (
    "nats_password_file",
    "nats_nkey_seed_file",
    "nats_tls_ca",
    "nats_tls_cert",
    "nats_tls_key",
)


def _with_credentials(raw: dict[str, object], folder: Path) -> dict[str, object]:
    """``raw`` with each credential field the file sets pointed at its copy in ``folder``
    (when systemd placed one there)."""
    out = dict(raw)
    for key in CREDENTIAL_FIELDS:
        if key in out and (folder / key).is_file():
            out[key] = str(folder / key)
    return out


def load(path: str | Path, kind: type[T], *, credentials: str | Path | None = None) -> T:
    """Read and validate one TOML config file, or raise ConfigError in one line.

    ``credentials``: the unit's credentials directory (the entry point passes
    $CREDENTIALS_DIRECTORY), see :data:`CREDENTIAL_FIELDS`."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist: create it (see README)") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p}: not valid TOML: {exc}") from None
    if credentials is not None:
        raw = _with_credentials(raw, Path(credentials))
    info = _TYPE_INFO.get(kind)
    if info is None:
        info = _TYPE_INFO[kind] = mi.type_info(kind)
    try:
        check_unknown(raw, info)
    except UnknownField as exc:
        raise ConfigError(f"config file {p}: {exc.line()}") from None
    try:
        cfg = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = re.search(r" - at `\$(.*)`$", text)
        what, field = (text[: m.start()], m.group(1)) if m else (text, "")
        field = _name_dict_keys(raw, kind, field).lstrip(".")
        m = re.search(r"Object (missing required|contains unknown) field `([^`]+)`", what)
        if m:
            field = f"{field}.{m.group(2)}".lstrip(".")
            what = "missing required field" if "missing" in m.group(1) else "unknown field"
        m = re.match(r"field (\w+): (.*)$", what)  # from a __post_init__: says the fix
        if m:
            field = f"{field}.{m.group(1)}".lstrip(".")
            raise ConfigError(f"config file {p}: field '{field}': {m.group(2)}") from None
        hint = next((h for k, h in _HINTS.items() if k in what), "fix the value")
        where = f"field '{field}'" if field else "top level"
        raise ConfigError(f"config file {p}: {where}: {what} ({hint})") from None
    _check(p, cfg)
    _remember_keys(cfg, raw)
    return cfg


def _check(p: Path, cfg: object) -> None:
    if isinstance(cfg, (AgentConfig, CoordinatorConfig)):
        nats_tls(cfg, source=p)  # bad TLS files fail at load, naming the field
        check_nkey_seed(cfg.nats_nkey_seed_file, where=f"config file {p}: ")
    if isinstance(cfg, CoordinatorConfig):
        url = cfg.catalog.url
        if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ConfigError(
                f"config file {p}: field 'catalog.url': {url.split('@')[-1]!r} is not "
                "sqlite:///PATH or postgresql://… (fix the scheme)"
            )
        for name in cfg.datasets:
            check_token("dataset name", name)
        _check_alerts(p, cfg.alerts)
        _check_maintenance(p, cfg)
        _check_schedules(p, cfg)
    if isinstance(cfg, AgentConfig) and not cfg.targets:
        raise ConfigError(f"config file {p}: field 'targets': no target defined (add one)")
    if isinstance(cfg, AgentConfig):
        for name, target in cfg.targets.items():
            if not isinstance(target, S3TargetConfig):
                continue
            if target.object_lock_mode is not None and target.object_lock_days is None:
                raise ConfigError(
                    f"config file {p}: field 'targets.{name}.object_lock_days': missing, "
                    "object_lock_mode needs a retention (add object_lock_days = N, or remove "
                    "object_lock_mode)"
                )
            if target.object_lock_days is not None and target.object_lock_mode is None:
                raise ConfigError(
                    f"config file {p}: field 'targets.{name}.object_lock_mode': missing, "
                    'object_lock_days needs a mode (add object_lock_mode = "GOVERNANCE" or '
                    '"COMPLIANCE", or remove object_lock_days)'
                )


def _cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a usable schedule, or None. Read like the scheduler does."""
    if len(expr.split()) != 5:
        return "write five fields: minute hour day-of-month month day-of-week"
    try:
        croniter(expr, datetime(2000, 1, 1, tzinfo=UTC), day_or=False).get_next(datetime)
    except CroniterBadDateError:
        return "never fires: no date matches all five fields (check day-of-month and month)"
    except CroniterError as exc:
        return f"not a valid cron expression ({exc}); see `man 5 crontab` for the fields"
    return None


def _check_schedules(p: Path, cfg: CoordinatorConfig) -> None:
    for tier, target_tiers in DEFAULT_RETENTION.items():
        for target_tier in target_tiers:
            value = cfg.retention.keep(tier, target_tier)
            if not KEEP_FORMAT.match(value):
                raise ConfigError(
                    f"config file {p}: field 'retention.{tier}.{target_tier}': {value!r} is "
                    'not a duration (write a number and d, w, m or y: "7d", "8w", "12m", "7y")'
                )
    for name, ds in cfg.datasets.items():
        for i, sched in enumerate(ds.schedules):
            field = f"datasets.{name}.schedules[{i}]"
            problem = _cron_problem(sched.cron)
            if problem:
                raise ConfigError(
                    f"config file {p}: field '{field}.cron': {sched.cron!r}: {problem}"
                )
            try:
                zoneinfo.ZoneInfo(sched.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ConfigError(
                    f"config file {p}: field '{field}.timezone': unknown time zone "
                    f'{sched.timezone!r} (use an IANA name such as "UTC" or "Europe/Berlin")'
                ) from None
            keeps = {t: cfg.retention.keep(sched.tier, t) for t in DEFAULT_RETENTION[sched.tier]}
            if all(int(v[:-1]) == 0 for v in keeps.values()):
                raise ConfigError(
                    f"config file {p}: field 'retention.{sched.tier}': keeps no copy on any "
                    f"target tier, which would delete the only copy of the {sched.tier} "
                    f"backups that {field} makes (give local, remote or archive a duration)"
                )


def _check_maintenance(p: Path, cfg: CoordinatorConfig) -> None:
    m = cfg.maintenance
    if m is None:
        return
    for task in ("verify", "prune", "replicate", "drill"):
        expr: str = getattr(m, f"{task}_cron")
        problem = _cron_problem(expr) if expr else None
        if problem:
            raise ConfigError(
                f"config file {p}: field 'maintenance.{task}_cron': {expr!r}: {problem} "
                '(or "" to turn it off)'
            )
    try:
        zoneinfo.ZoneInfo(m.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"config file {p}: field 'maintenance.timezone': unknown time zone "
            f'{m.timezone!r} (use an IANA name such as "UTC" or "Europe/Berlin")'
        ) from None
    known = sorted({ds.target for ds in cfg.datasets.values()})
    for source in m.replicate:
        if source not in known:
            raise ConfigError(
                f"config file {p}: field 'maintenance.replicate.{source}': no dataset is "
                f"stored on target '{source}' (known: {', '.join(known) or 'none'}); use a "
                "dataset's target"
            )
    # A misspelt tier entry would silently give a replica the local tier (a shorter
    # retention): every name must be a dataset's target or a replication destination.
    targets = sorted({*known, *(d for dests in m.replicate.values() for d in dests)})
    for name in m.target_tiers:
        if name not in targets:
            raise ConfigError(
                f"config file {p}: field 'maintenance.target_tiers.{name}': no dataset is "
                f"stored on or replicated to target '{name}' (known: "
                f"{', '.join(targets) or 'none'}); check the spelling"
            )


def _check_alerts(p: Path, alerts: AlertsConfig) -> None:
    url = alerts.webhook_url
    if url is not None and not re.match(r"^https?://[^/\s]+", url):
        shown = re.sub(r"//[^/@]*@", "//", url)  # never echo credentials
        raise ConfigError(
            f"config file {p}: field 'alerts.webhook_url': {shown!r} is not an http:// or "
            "https:// URL (write the receiver's full URL, e.g. "
            "http://alertmanager:9093/api/v2/alerts)"
        )
