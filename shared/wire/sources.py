"""What an agent backs up: the source descriptions carried by backup jobs.

One tagged struct per kind of source (``type`` = files, redis, postgres, mariadb,
system, docker_volume, docker_exec); :data:`Source` is their union. They travel inside
:class:`shared.wire.jobs.BackupJob` and are recorded in every manifest, so the wire rules
of :mod:`shared.wire` apply: a new field always has a default, none is renamed or
retyped. Secrets never travel here: passwords come from the agent's environment.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class LvmSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="lvm"):
    """``lvcreate -s -n NAME -L size VG/LV``, mounted read-only at ``mount_point``.
    ``origin`` is where the live LV is mounted (default: the source path itself)."""

    volume_group: str
    logical_volume: str
    size: str = "1G"
    mount_point: str
    origin: str | None = None


class ZfsSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="zfs"):
    """``zfs snapshot DATASET@NAME``, read from ``<mountpoint>/.zfs/snapshot/NAME``.
    ``mountpoint`` unset: asked from ``zfs get mountpoint``."""

    dataset: str
    mountpoint: str | None = None


class BtrfsSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="btrfs"):
    """``btrfs subvolume snapshot -r SUBVOLUME DIR/NAME``; ``snapshot_dir`` defaults to
    the subvolume's parent folder (it must be on the same btrfs file system)."""

    subvolume: str
    snapshot_dir: str | None = None


Snapshot = LvmSnapshot | ZfsSnapshot | BtrfsSnapshot


DEFAULT_SECRET_GLOBS = ["*.env", ".env", "*.key", "id_*", "*.pem"]


class FilesSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="files"):
    """A directory tree on the agent's host.

    Globs are matched against the '/'-separated path relative to ``path``: one without
    '/' matches a name at any depth, one with '/' the whole relative path; ``*`` and
    ``?`` stay inside one name, ``**`` spans any number of folders. ``exclude`` wins over
    ``include``; an excluded folder is not descended; with ``include`` only matching
    entries (a matching folder with all its content) and the folders above them are
    kept. ``secret`` files are backed up, but their names and contents never appear in
    logs, events or errors. ``one_file_system`` stops at mount points (recorded as empty
    folders and logged). ``snapshot``: read from an LVM/ZFS/btrfs snapshot taken for
    this backup and always removed afterwards. ``on_unreadable``: a file or folder
    that cannot be read (permission denied, vanished, I/O error) is left out with a
    warning naming it (``warn``), or fails the backup (``fail``)."""

    path: str
    exclude: list[str] = []
    include: list[str] = []
    secret: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SECRET_GLOBS))
    one_file_system: bool = False
    xattrs: bool = True
    snapshot: Snapshot | None = None
    on_unreadable: Literal["warn", "fail"] = "warn"


class RedisSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="redis"):
    """A Redis server's RDB snapshot (the password comes from REDISCLI_AUTH on the agent)
    and, with ``aof`` and when the server has ``appendonly yes``, its AOF files. The AOF
    is read from the server's own folder (CONFIG GET dir), so the agent must run on the
    Redis host; ``aof_dir`` names that folder where the agent sees it under another path
    (a container volume)."""

    host: str = "127.0.0.1"
    port: int = 6379
    user: str | None = None
    aof: bool = True
    aof_dir: str | None = None


class PostgresSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="postgres"):
    """A PostgreSQL cluster: a hot physical base backup (``basebackup``, streamed from
    pg_basebackup as one tar with the WAL needed to make it consistent) or a logical
    ``pg_dump`` of ``database`` (``dump``). Passwords come from the agent's environment
    (PGPASSWORD or ~/.pgpass), never from jobs."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    mode: Literal["basebackup", "dump"] = "basebackup"
    database: str | None = None
    # the folder archive_command (``mosaic-backup wal-archive --spool DIR %p %f``) copies
    # finished WAL into; set, an incremental backup stores that WAL (a log backup)
    wal_spool: str | None = None
    # how long a log backup waits for the archiver to copy the segment it just closed
    archive_wait_s: float = 120.0


class MariaDBSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="mariadb"):
    """A MariaDB server: a hot physical backup streamed from ``mariabackup`` as xbstream
    (``mariabackup``) or a logical ``mariadb-dump`` of ``databases`` (``dump``; empty
    means all). ``socket`` wins over ``host``/``port``. Passwords come from the agent's
    environment (MYSQL_PWD), never from jobs; option files are not read, since every
    tool runs with ``--no-defaults`` so a host's my.cnf cannot change what is backed up."""

    socket: str | None = None
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    mode: Literal["mariabackup", "dump"] = "mariabackup"
    databases: list[str] = []
    # log backups (incremental jobs of a mariabackup source) read the closed binlogs
    # from the server's folder (@@log_bin_basename); set this where the agent sees that
    # folder under another path (a container volume). The agent runs on the DB host.
    binlog_dir: str | None = None


class SystemSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="system"):
    """The host's state as files: package lists, crontabs and timers, firewall rules,
    network settings, container configurations. ``include`` names items or groups
    (``packages``, ``cron/crontab-root.txt``); empty means every known item. With
    ``optional_missing`` an item whose tool is absent or fails is listed in MISSING.txt;
    without it the job fails, naming the tool and the package that provides it."""

    include: list[str] = []
    optional_missing: bool = True


DOCKER_URL = "unix:///var/run/docker.sock"


class DockerVolumeSource(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="docker_volume"
):
    """A named Docker volume, exported as one tar stream ``<volume>.tar`` while its
    service keeps running (a stopped helper container from ``helper_image`` mounts it
    read-only; nothing runs in it). ``helper_image`` must be present locally; None uses
    the image of a container that mounts the volume. Containers in ``pause`` are paused
    and those in ``stop`` stopped around the export, and always resumed. A restore gives
    the tar back as a file; ``mosaic-backup docker restore-volume`` puts it into a volume."""

    volume: str
    docker_url: str = DOCKER_URL
    pause: list[str] = []
    stop: list[str] = []
    helper_image: str | None = None


class DockerExecSource(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="docker_exec"
):
    """An application's own backup command run inside a running container (``gitea
    dump``, ``manage.py dumpdata``). ``output`` None: the command's stdout is the stream;
    else the file the command writes inside the container, fetched after it succeeds.
    The stream is stored as ``stream_name`` (default: the output's file name, or
    ``<container>.out``). A non-zero exit fails the job with the tail of its stderr."""

    container: str
    command: list[str]
    output: str | None = None
    stream_name: str | None = None
    user: str | None = None
    docker_url: str = DOCKER_URL


Source = (
    FilesSource
    | RedisSource
    | PostgresSource
    | MariaDBSource
    | SystemSource
    | DockerVolumeSource
    | DockerExecSource
)
