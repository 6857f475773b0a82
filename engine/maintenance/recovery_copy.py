"""Keep the offline copy of a repository's config and data keys in the key file.

Every process that opens a repository with the full key file records the sealed config
and the master-wrapped data keys in the key file's ``recovery`` member (see
engine/recovery.py), so the key file the user keeps offline can bring back a
lost ``config`` or ``keys/`` object. Write-only agents hold neither and record nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.recovery import record_in_key_file
from engine.repository import Repository

log = logging.getLogger(__name__)


def remember_in_key_file(key_file: str | Path, repo: Repository) -> None:
    if not repo.sealed_config or repo.write_only is not None:
        return
    if record_in_key_file(
        key_file, repo.config.repository_id, repo.sealed_config, repo.wrapped_keys
    ):
        log.info(
            "key file %s now holds a recovery copy of repository %s's config and keys; "
            "refresh your offline copy of it",
            key_file,
            repo.config.repository_id,
        )
