"""Docker containers, named volumes and compose projects, from the docker daemon.

Asked through the docker SDK at ``[inventory] docker_url``; a daemon that does not
answer gives no items and one ProbeError (a host without docker is normal). Compose
projects are read from the labels compose puts on containers and volumes
(``com.docker.compose.project``, ``…project.working_dir``, ``…project.config_files``).
A container's bind mounts under /proc, /sys, /dev and /run are left out: they are the
host's plumbing (the docker socket, say), not data.
"""

from __future__ import annotations

import re
from typing import Any

import docker
import docker.errors
import requests

from agent.sources import dockerapi
from shared.config.inventory import InventoryConfig
from shared.errors import SourceError
from shared.wire.inventory import InventoryItem, ProbeError

PROJECT = "com.docker.compose.project"
WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_FILES = "com.docker.compose.project.config_files"
PLUMBING = ("/proc", "/sys", "/dev", "/run", "/var/run")
TIMEOUT_S = 10
ANONYMOUS = re.compile(r"^[0-9a-f]{64}$")  # the name docker gives an image's VOLUME


def _plumbing(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PLUMBING)


def _container(c: Any, projects: dict[str, InventoryItem]) -> InventoryItem:
    attrs = c.attrs
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    volumes, binds = [], []
    for m in attrs.get("Mounts") or []:
        if m.get("Type") == "volume" and m.get("Name"):
            volumes.append(str(m["Name"]))
        elif m.get("Type") == "bind" and m.get("Source") and not _plumbing(m["Source"]):
            binds.append(str(m["Source"]))
    project = str(labels.get(PROJECT, ""))
    if project and project not in projects:
        files = [f for f in str(labels.get(CONFIG_FILES, "")).split(",") if f]
        workdir = labels.get(WORKING_DIR) or None
        projects[project] = InventoryItem(
            kind="compose_project",
            key=project,
            detail=f"compose files: {', '.join(files) or 'unknown'}",
            path=workdir,
            paths=files,
        )
    name = str(attrs.get("Name", c.name)).lstrip("/")
    image = (attrs.get("Config") or {}).get("Image", "")
    state = (attrs.get("State") or {}).get("Status", "")
    return InventoryItem(
        kind="docker_container",
        key=name,
        detail=f"image {image}, {state}" + (f", project {project}" if project else ""),
        volumes=sorted(set(volumes)),
        paths=sorted(set(binds)),
        project=project,
    )


def probe(cfg: InventoryConfig) -> tuple[list[InventoryItem], list[ProbeError]]:
    try:
        client = dockerapi.connect(cfg.docker_url)  # pinged; never leaks its socket
    except SourceError as exc:
        return [], [ProbeError(probe="docker", message=str(exc))]
    try:
        containers = client.containers.list(all=True)
        volumes = client.volumes.list()
        projects: dict[str, InventoryItem] = {}
        items = [_container(c, projects) for c in containers]
        used: dict[str, list[str]] = {}
        for item in items:
            for v in item.volumes:
                used.setdefault(v, []).append(item.key)
        for v in volumes:
            labels = v.attrs.get("Labels") or {}
            project = str(labels.get(PROJECT, ""))
            users = used.get(v.name, [])
            detail = f"used by {', '.join(users)}" if users else "not in use"
            if ANONYMOUS.match(str(v.name)) and not labels:
                detail = "anonymous, " + detail
            items.append(
                InventoryItem(
                    kind="docker_volume",
                    key=str(v.name),
                    detail=detail + (f", project {project}" if project else ""),
                    path=v.attrs.get("Mountpoint"),
                    project=project,
                )
            )
        items += projects.values()
        return items, []
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return [], [ProbeError(probe="docker", message=f"docker daemon at {cfg.docker_url}: {exc}")]
    finally:
        client.close()
