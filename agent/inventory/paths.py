"""Well-known configuration on the host: folders and files of ``[inventory] config_paths``
(globs expanded, only what exists is reported) and the host's own systemd units: unit
files in ``systemd_dirs`` (``/etc/systemd/system``) that are files, not the links
``systemctl enable`` makes to units a package installed elsewhere."""

from __future__ import annotations

import glob
import os

from shared.config.inventory import InventoryConfig
from shared.wire.inventory import InventoryItem, ProbeError

UNIT_SUFFIXES = (".service", ".timer", ".socket", ".mount", ".path", ".target")
COUNT_LIMIT = 100_000  # files counted per folder for the detail line, at most


def _count(folder: str) -> str:
    n = 0
    for _, _, files in os.walk(folder):
        n += len(files)
        if n >= COUNT_LIMIT:
            return f"folder, {COUNT_LIMIT}+ files"
    return f"folder, {n} files"


def _expand(pattern: str) -> list[str]:
    if glob.has_magic(pattern):
        return sorted(glob.glob(pattern))
    return [pattern] if os.path.lexists(pattern) else []


def _description(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("Description="):
                    return line.partition("=")[2].strip()
    except OSError:
        pass
    return ""


def probe(cfg: InventoryConfig) -> tuple[list[InventoryItem], list[ProbeError]]:
    items: list[InventoryItem] = []
    errors: list[ProbeError] = []
    seen: set[str] = set()
    for pattern in cfg.config_paths:
        for path in _expand(pattern):
            path = os.path.normpath(os.path.abspath(path))
            if path in seen:
                continue
            seen.add(path)
            try:
                detail = (
                    _count(path) if os.path.isdir(path) else f"file, {os.path.getsize(path)} bytes"
                )
            except OSError as exc:
                errors.append(ProbeError(probe="paths", message=f"{path}: {exc.strerror or exc}"))
                continue
            items.append(InventoryItem(kind="config_path", key=path, detail=detail, path=path))
    for folder in cfg.systemd_dirs:
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(ProbeError(probe="systemd", message=f"{folder}: {exc.strerror or exc}"))
            continue
        for name in names:
            path = os.path.join(folder, name)
            if not name.endswith(UNIT_SUFFIXES) or os.path.islink(path) or not os.path.isfile(path):
                continue
            items.append(
                InventoryItem(kind="systemd_unit", key=name, detail=_description(path), path=path)
            )
    return items, errors
