"""Storage target sections (``[targets.NAME]``), one per kind; read by the agent and the
host-local repository tools, opened by :mod:`engine.storage.open`."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from shared.config.limits import TargetLimits


class LocalTargetConfig(
    TargetLimits,
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
    # (docs/security.md: append-only targets); prune runs on an agent without this flag.
    append_only: bool = False
    media: str = "disk"
    location: Literal["onsite", "offsite"] = "onsite"
    tier: Literal["local", "remote", "archive"] = "local"

    def __post_init__(self) -> None:
        super().__post_init__()  # the rate limits
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
    TargetLimits,
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
        super().__post_init__()  # the rate limits
        url = self.endpoint_url
        if url is not None and not re.match(r"^https?://[^/\s]", url):
            shown = re.sub(r"//[^/@]*@", "//", url)  # never echo credentials
            bare = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", shown)
            problem = f"{shown!r} has no scheme" if bare == shown else f"{shown!r} is not http(s)"
            raise ValueError(
                f"field endpoint_url: {problem}; write http://{bare} or https://{bare}"
            )


class SftpTargetConfig(
    TargetLimits,
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
