"""Docker volumes: a named volume exported as one tar stream while its service runs.

A *stopped* helper container (``helper_image``, never started) mounts the volume
read-only at ``/<volume>``; the daemon's archive API streams it as one tar, stored as
``<volume>.tar`` with the volume's files under ``<volume>/``. The service keeps running
unless the source names containers to ``pause`` or ``stop`` around the export; those are
resumed afterwards whatever happens (only the ones this export paused or stopped). The
daemon ends the HTTP stream cleanly even when archiving fails half-way, so a stream only
counts when it ends with tar's end-of-archive blocks.

Restore gives the tar back as a file; :func:`restore_volume` (``mosaic-backup docker
restore-volume``) unpacks it into a named volume with ``put_archive``, keeping modes,
owners and times, and refuses a volume that is not empty (the archive API cannot delete
what is already there). It is a separate, explicit step on the docker host, not part of
restore jobs: a restore job (and a restore drill) only writes into its destination
folder, never into live state on the host.

Commands inside containers (``docker_exec``) live in :mod:`agent.sources.docker_exec`.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import docker.errors

from agent.sources.dockerapi import (
    TAR_END,
    VOLUME_NAME,
    Pieces,
    archive,
    connect,
    get_container,
    reason,
    where,
)
from engine.backup.stream import Stream, StreamHandle
from shared.errors import MosaicError, SourceError
from shared.wire.sources import DockerExecSource, DockerVolumeSource

log = logging.getLogger(__name__)

HELPER_LABEL = "org.mosaic-backup.helper"


# --- volumes ---------------------------------------------------------------------------


def _helper_image(client: Any, volumes: list[str], configured: str | None) -> str:
    """``configured``, else the image of a container mounting one of ``volumes``: it is
    present locally for sure, and nothing is ever pulled."""
    if configured:
        try:
            client.images.get(configured)
        except docker.errors.ImageNotFound:
            raise SourceError(
                f"helper_image {configured!r} is not present on the docker host: set "
                "helper_image to a local image ('docker images'); it is never pulled"
            ) from None
        return configured
    for volume in volumes:
        for c in client.containers.list(all=True, filters={"volume": volume}):
            image: str = c.attrs["Image"]
            return image
    raise SourceError(
        f"no container uses volume {volumes[0]!r} to borrow an image from: set helper_image "
        "to an image present on the docker host (e.g. busybox)"
    )


def _helper(client: Any, image: str, volume: str, mount: str, mode: str) -> Any:
    """A created, never started container with ``volume`` at ``/<mount>``."""
    return client.containers.create(
        image,
        command=["true"],
        volumes={volume: {"bind": f"/{mount}", "mode": mode}},
        network_disabled=True,
        labels={HELPER_LABEL: "volume"},
    )


def _check_volume(client: Any, name: str, url: str) -> None:
    if not VOLUME_NAME.match(name):
        raise SourceError(f"docker volume name {name!r} is not valid: use letters, digits, _.-")
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        raise SourceError(
            f"docker volume {name!r} does not exist on {where(url)}: check 'docker volume ls'"
        ) from None


class VolumeExport:
    """One volume as a tar stream; pauses/stops the configured containers meanwhile."""

    def __init__(self, src: DockerVolumeSource) -> None:
        self.what = f"export of docker volume {src.volume} from {where(src.docker_url)}"
        self._client = connect(src.docker_url)
        self._resume: list[tuple[str, Callable[[], None]]] = []
        self._helper: Any = None
        self._pieces: Pieces | None = None
        try:
            _check_volume(self._client, src.volume, src.docker_url)
            image = _helper_image(self._client, [src.volume], src.helper_image)
            self._quiesce(src)
            self._helper = _helper(self._client, image, src.volume, src.volume, "ro")
            self._pieces = archive(self._client, self._helper.id, f"/{src.volume}", self.what)
            if self._pieces is None:
                raise SourceError(f"{self.what} failed: the helper sees no /{src.volume}")
        except BaseException as exc:
            self._release(raising=False)
            if isinstance(exc, Exception) and not isinstance(exc, MosaicError):
                raise SourceError(f"{self.what} failed: {reason(exc)}") from exc
            raise
        self.reader: IO[bytes] = io.BufferedReader(self._pieces, 1 << 20)

    def _quiesce(self, src: DockerVolumeSource) -> None:
        for name in src.pause:
            c = get_container(self._client, name, src.docker_url, "in pause")
            if c.status == "running":  # already paused or stopped: leave it as it is
                c.pause()
                self._resume.append((f"unpause {name}", c.unpause))
                log.info("paused container %s for %s", name, self.what)
        for name in src.stop:
            c = get_container(self._client, name, src.docker_url, "in stop")
            if c.status == "running":  # a paused one is quiet already
                c.stop()
                self._resume.append((f"start {name}", c.start))
                log.info("stopped container %s for %s", name, self.what)

    def _release(self, *, raising: bool) -> None:
        """Remove the helper, resume what was paused or stopped (all, whatever fails)."""
        failed: list[str] = []
        if self._pieces is not None:
            self._pieces.close()  # the daemon holds the helper until its stream ends
        if self._helper is not None:
            try:
                # v: anonymous volumes the image declares (VOLUME); named ones always stay
                self._helper.remove(force=True, v=True)
            except Exception as exc:  # the resumes below matter more
                log.warning("could not remove helper container: %s", reason(exc))
            self._helper = None
        for action, resume in reversed(self._resume):
            try:
                resume()
            except Exception as exc:  # try every one, report them all
                failed.append(f"{action}: {reason(exc)}")
                log.error("after %s: could not %s", self.what, failed[-1])
        self._resume = []
        self._client.close()
        if failed and raising:
            raise SourceError(f"after {self.what}, could not {'; '.join(failed)}: do it by hand")

    def finish(self) -> None:
        try:
            pieces = self._pieces
            assert pieces is not None
            rest = self.reader.read(1)
            if rest or not pieces.eof:
                raise SourceError(f"{self.what}: output was not read to the end")
            if pieces.size % 512 or pieces.tail != TAR_END:
                raise SourceError(
                    f"{self.what} failed: the tar ended early after {pieces.size} bytes"
                    " (see the docker daemon's log)"
                )
        except BaseException:
            self._release(raising=False)
            raise
        self._release(raising=True)

    def abort(self) -> None:
        self._release(raising=False)


def restore_volume(
    tar_path: Path, volume: str, *, docker_url: str, helper_image: str | None = None
) -> int:
    """Unpack a volume tar made by a ``docker_volume`` backup into ``volume`` (created
    if missing; refused unless empty). Returns the number of tar members."""
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"{tar_path} is not a readable tar: {reason(exc)}") from exc
    top = members[0].name.split("/")[0] if members else ""
    if not VOLUME_NAME.match(top) or not members[0].isdir():
        raise SourceError(f"{tar_path} is not a docker volume export (no top folder)")
    for m in members:
        parts = m.name.split("/")
        if parts[0] != top or ".." in parts:
            raise SourceError(f"{tar_path}: member {m.name!r} is outside {top}/: refused")
    if not VOLUME_NAME.match(volume):
        raise SourceError(f"docker volume name {volume!r} is not valid: use letters, digits, _.-")
    client = connect(docker_url)
    helper = None
    try:
        try:
            client.volumes.get(volume)
        except docker.errors.NotFound:
            client.volumes.create(volume)
        image = _helper_image(client, [volume, top], helper_image)
        helper = _helper(client, image, volume, top, "rw")
        present = archive(client, helper.id, f"/{top}", f"listing docker volume {volume}")
        if present is None:
            raise SourceError(f"restore into docker volume {volume}: the helper sees no /{top}")
        with present, tarfile.open(fileobj=present, mode="r|") as listing:
            entries = [listing.next(), listing.next()]  # the root folder, then anything
        if entries[1] is not None:
            raise SourceError(
                f"docker volume {volume!r} is not empty: restore into a new volume name, or "
                f"remove it first ('docker volume rm {volume}')"
            )
        with open(tar_path, "rb") as f:
            helper.put_archive("/", f)
    except docker.errors.DockerException as exc:
        raise SourceError(f"restore into docker volume {volume} failed: {reason(exc)}") from exc
    finally:
        if helper is not None:
            helper.remove(force=True, v=True)  # anonymous volumes only, never `volume`
        client.close()
    log.info("restored %s into docker volume %s (%d entries)", tar_path, volume, len(members))
    return len(members)


# --- streams ---------------------------------------------------------------------------


def streams(src: DockerVolumeSource | DockerExecSource) -> list[Stream]:
    if isinstance(src, DockerExecSource):
        from agent.sources import docker_exec

        return docker_exec.streams(src)
    if not VOLUME_NAME.match(src.volume):
        raise SourceError(
            f"docker volume name {src.volume!r} is not valid: use letters, digits, _.-"
        )

    def open_volume() -> StreamHandle:
        return VolumeExport(src)

    return [Stream(f"{src.volume}.tar".encode(), open_volume)]
