"""Typed TOML configuration for the agent and the coordinator.

Files are decoded straight into frozen msgspec Structs, so a wrong field is reported
with its path (``targets.offsite.bucket``), the file, what was expected and how to fix
it, in one line. Environment variables are read only by the entry points.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from shared.errors import ConfigError
from shared.messages import Source
from shared.subjects import check_token

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
    """A repository in a folder on a local or mounted disk."""

    path: str
    media: str = "disk"
    location: Literal["onsite", "offsite"] = "onsite"
    tier: Literal["local", "remote", "archive"] = "local"


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
    media: str = "object"
    location: Literal["onsite", "offsite"] = "offsite"
    tier: Literal["local", "remote", "archive"] = "remote"


class SftpTargetConfig(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="sftp"):
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
    media: str = "disk"
    location: Literal["onsite", "offsite"] = "offsite"
    tier: Literal["local", "remote", "archive"] = "remote"


TargetConfig = LocalTargetConfig | S3TargetConfig | SftpTargetConfig


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``agent.toml``: who this agent is, where NATS is, its key and its targets."""

    name: Name
    nats_url: str = "nats://127.0.0.1:4222"
    key_file: str
    targets: dict[Name, TargetConfig]
    ack_wait_s: PositiveFloat = 30.0
    progress_interval_s: PositiveFloat = 2.0
    connect_timeout_s: PositiveFloat = 10.0
    pack_size: Annotated[int, msgspec.Meta(ge=1 << 16, le=1 << 30)] = 8 << 20
    zstd_level: Annotated[int, msgspec.Meta(ge=1, le=22)] = 3
    # packs uploaded between index checkpoints: a killed backup re-uploads at most these
    index_every_packs: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 16


class DatasetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One thing to back up: which agent, what source, to which of its targets."""

    agent: Name
    target: Name
    source: Source


class CatalogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``url``: ``sqlite:///path/catalog.db`` (default) or ``postgresql://…``."""

    url: str = "sqlite:///var/lib/mosaic-backup/catalog.db"


class CoordinatorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``coordinator.toml``: NATS, the catalog and the datasets."""

    name: Name = "coordinator"
    nats_url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: PositiveFloat = 10.0
    catalog: CatalogConfig = CatalogConfig()
    datasets: dict[Name, DatasetConfig] = {}


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


def load(path: str | Path, kind: type[T]) -> T:
    """Read and validate one TOML config file, or raise ConfigError in one line."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist: create it (see README)") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p}: not valid TOML: {exc}") from None
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
        hint = next((h for k, h in _HINTS.items() if k in what), "fix the value")
        where = f"field '{field}'" if field else "top level"
        raise ConfigError(f"config file {p}: {where}: {what} ({hint})") from None
    _check(p, cfg)
    return cfg


def _check(p: Path, cfg: object) -> None:
    if isinstance(cfg, CoordinatorConfig):
        url = cfg.catalog.url
        if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ConfigError(
                f"config file {p}: field 'catalog.url': {url.split('@')[-1]!r} is not "
                "sqlite:///PATH or postgresql://… (fix the scheme)"
            )
        for name in cfg.datasets:
            check_token("dataset name", name)
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
