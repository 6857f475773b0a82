"""``repo mount``: the backups of a repository as a read-only FUSE file system, on the
agent's host with the agent's config and key (never on the coordinator, which holds no
key): ``<dataset>/by-date/<started, UTC>/…``, ``<dataset>/by-id/<backup id>`` and
``<dataset>/latest`` (engine.restore.mountfs has the layout and the read path).

The mount point is checked before anything else (it must be an existing, empty folder
that is not a mount point already): a bad one is one line and exit 1, nothing mounted.
The command stays in the foreground until the file system is unmounted
(``fusermount3 -u MOUNTPOINT``) or it gets Ctrl-C or SIGTERM, which unmount it; then
it exits 0. pyfuse3 is the optional ``mount`` extra, imported only here.
"""

from __future__ import annotations

import argparse
import errno
import os
import re

from rich.console import Console
from rich.text import Text

from engine.restore.mountfs import CACHE_BYTES, ROOT_INODE, BackupTree
from mosaic.commands.repo._common import common_args, opened
from shared.errors import ConfigError

NEEDS_PYFUSE3 = (
    "repo mount needs pyfuse3, which is not installed: pip install 'mosaic-backup[mount]' "
    "(it builds against libfuse3; Debian: apt-get install fuse3 libfuse3-dev pkg-config)"
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "mount", help="the backups as a read-only file system (FUSE), until unmounted"
    )
    common_args(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty folder")
    p.add_argument("--dataset", default=None, metavar="D", help="only the backups of this dataset")
    p.add_argument(
        "--cache-mib",
        type=int,
        default=CACHE_BYTES >> 20,
        metavar="N",
        help=f"decrypted chunks kept in memory, in MiB (default {CACHE_BYTES >> 20})",
    )
    p.set_defaults(func=mount_cmd)


def check_mountpoint(text: str) -> str:
    """The absolute mount point, or ConfigError naming the argument and the fix."""
    path = os.path.abspath(text)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(
            f"MOUNTPOINT: {path} does not exist; create an empty folder first (mkdir -p {path})"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ConfigError(
                f"MOUNTPOINT: {path} is a mount whose process is gone; unmount it first "
                f"(fusermount3 -u {path})"
            ) from None
        raise ConfigError(f"MOUNTPOINT: cannot look at {path} ({exc.strerror})") from None
    if not os.path.isdir(path) or st.st_mode & 0o170000 != 0o040000:
        raise ConfigError(f"MOUNTPOINT: {path} is not a folder; choose an empty folder")
    if os.path.ismount(path):
        raise ConfigError(
            f"MOUNTPOINT: {path} is a mount point already; choose an empty folder that "
            f"is not one (a mount left by repo mount goes with fusermount3 -u {path})"
        )
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise ConfigError(f"MOUNTPOINT: cannot list {path} ({exc.strerror})") from None
    if names:
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        raise ConfigError(
            f"MOUNTPOINT: {path} is not empty (it holds {names[0]!r}{more}); mount on an "
            "empty folder (mkdir a new one)"
        )
    return path


async def mount_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    mountpoint = check_mountpoint(args.mountpoint)
    if args.cache_mib < 1:
        raise ConfigError(f"--cache-mib: {args.cache_mib} is too small; give 1 or more (MiB)")
    try:
        from mosaic.commands.repo import mount_fuse
    except ImportError as exc:
        raise ConfigError(NEEDS_PYFUSE3) from exc
    async with opened(args) as repo:
        tree = await BackupTree.load(repo, args.dataset, args.cache_mib << 20)
        datasets = len(tree.get(ROOT_INODE).children or {})
        what = (
            f"{tree.backups:,} backup{'' if tree.backups == 1 else 's'} of {datasets:,} "
            f"dataset{'' if datasets == 1 else 's'}"
        )

        def ready() -> None:
            out.print(
                Text(
                    f"mounted {what} from {repo.target.describe()} at {mountpoint} "
                    f"(read-only); Ctrl-C or `fusermount3 -u {mountpoint}` unmounts"
                ),
                soft_wrap=True,
            )

        scope = re.sub(r"[^A-Za-z0-9._-]", "_", args.dataset or "all")
        fsname = f"mosaic-backup:{scope}"  # the first column of /proc/mounts
        await mount_fuse.serve(tree, mountpoint, fsname, ready)
    skipped = f" ({tree.skipped:,} unsafe entries were left out)" if tree.skipped else ""
    out.print(Text(f"unmounted {mountpoint}{skipped}"), soft_wrap=True)
    return 0
