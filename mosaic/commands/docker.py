"""``mosaic-backup docker restore-volume FILE.tar VOLUME``: put a restored volume export
(the ``<volume>.tar`` of a ``docker_volume`` backup) into a named Docker volume, on the
docker host. The volume is created if missing and must be empty otherwise; modes, owners
and times come back as they were. Restore jobs never do this themselves: they (and restore
drills) write only into their destination folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio
from rich.console import Console

from shared.wire.sources import DOCKER_URL

HELP = "Docker helpers (on the docker host)"


def register(dock: argparse.ArgumentParser) -> None:
    actions = dock.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "restore-volume", help="unpack a restored <volume>.tar into a new or empty volume"
    )
    p.add_argument("tar", metavar="FILE.tar", help="the restored export of a docker_volume")
    p.add_argument("volume", metavar="VOLUME", help="the volume to fill (created if missing)")
    p.add_argument("--docker-url", default=DOCKER_URL, help=f"the daemon (default {DOCKER_URL})")
    p.add_argument(
        "--helper-image",
        default=None,
        help="a local image for the (never started) helper container; default: the image "
        "of a container that uses the volume",
    )


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from agent.sources.docker import restore_volume  # the docker SDK only when needed

    entries = await anyio.to_thread.run_sync(
        lambda: restore_volume(
            Path(args.tar),
            args.volume,
            docker_url=args.docker_url,
            helper_image=args.helper_image,
        )
    )
    out.print(f"restored {entries} entries from {args.tar} into docker volume {args.volume}")
    return 0
