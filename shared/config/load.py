"""Reading a config file: TOML → frozen msgspec Structs, every problem in one line naming
the file, the field and the fix. Environment variables are read only by the entry
points."""

from __future__ import annotations

import re
import tomllib
import weakref
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec
import msgspec.inspect as mi
from croniter import CroniterBadDateError, CroniterError, croniter

from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    DEFAULT_RETENTION,
    KEEP_FORMAT,
    AlertsConfig,
    CoordinatorConfig,
)
from shared.config.fields import UnknownField, check_unknown
from shared.config.notify import check_routes
from shared.config.targets import S3TargetConfig
from shared.errors import ConfigError
from shared.nats_credentials import check_nkey_seed, nats_tls
from shared.subjects import check_token

T = TypeVar("T")


_HINTS = {
    "Expected `object`, got": "write it as a [table]",
    "matching regex": "use only letters, digits, '-' and '_'",
    "missing required field": "add it",
    "unknown field": "remove it or check its spelling",
    "Invalid value": "see the allowed values in docs/configuration.md",
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
        raise ConfigError(
            f"config file {p} does not exist: create it (see docs/configuration.md)"
        ) from None
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
        if cfg.notify or cfg.pings:
            try:
                check_routes(cfg.notify, cfg.pings)
            except ConfigError as exc:
                raise ConfigError(f"config file {p}: {exc}") from None
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
            _check_grace(p, f"{field}.grace_s", sched.grace_s, cfg.scheduler_interval_s)
            keeps = {t: cfg.retention.keep(sched.tier, t) for t in DEFAULT_RETENTION[sched.tier]}
            if all(int(v[:-1]) == 0 for v in keeps.values()):
                raise ConfigError(
                    f"config file {p}: field 'retention.{sched.tier}': keeps no copy on any "
                    f"target tier, which would delete the only copy of the {sched.tier} "
                    f"backups that {field} makes (give local, remote or archive a duration)"
                )


def _check_grace(p: Path, field: str, grace_s: float, interval_s: float) -> None:
    """A run is seen up to one scheduler pass after its time; a grace shorter than that
    pass makes most runs "missed" before the scheduler looks, so they never run."""
    if grace_s < interval_s:
        raise ConfigError(
            f"config file {p}: field '{field}': {grace_s:g} is shorter than "
            f"'scheduler_interval_s' ({interval_s:g}), so the scheduler would find most runs "
            f"already past their grace and never start them (set grace_s to at least "
            f"{interval_s:g}, or lower scheduler_interval_s)"
        )


def _check_maintenance(p: Path, cfg: CoordinatorConfig) -> None:
    m = cfg.maintenance
    if m is None:
        return
    _check_grace(p, "maintenance.grace_s", m.grace_s, cfg.scheduler_interval_s)
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
