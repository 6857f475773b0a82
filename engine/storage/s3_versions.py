"""Deleting every version of one key on a versioned (Object Lock) bucket.

A plain DeleteObject on a versioned bucket only adds a delete marker: the data stays and
the delete looks like success. With Object Lock configured, the S3 target deletes each
version by id instead, and a version a lock protects is reported with the date it is
locked until.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def versions_of(client: Any, bucket: str, k: str) -> Sequence[tuple[str, bool]]:
    """(version id, is latest) of every version and delete marker of exactly ``k``."""
    found: list[tuple[str, bool]] = []
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=k)
    for page in pages:
        entries = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        found += [(e["VersionId"], e["IsLatest"]) for e in entries if e["Key"] == k]
        # Listings are in key order and ``k`` sorts before every longer key it prefixes.
        if any(e["Key"] != k for e in entries):
            break
    return found


def delete_version(client: Any, bucket: str, k: str, version_id: str) -> str | None:
    """Delete one version; if a lock refuses it, say until when (None: deleted)."""
    try:
        client.delete_object(Bucket=bucket, Key=k, VersionId=version_id)
    except ClientError as exc:
        if _code(exc) not in ("AccessDenied", "403"):
            raise
        why = lock_of(client, bucket, k, version_id)
        if why is None:  # not a lock: a real permission problem, reported as such
            raise
        return why
    return None


def lock_of(client: Any, bucket: str, k: str, version_id: str) -> str | None:
    try:
        head = client.head_object(Bucket=bucket, Key=k, VersionId=version_id)
    except ClientError:
        return None
    if head.get("ObjectLockLegalHoldStatus") == "ON":
        return "under an Object Lock legal hold until the hold is removed"
    mode = head.get("ObjectLockMode")
    until = head.get("ObjectLockRetainUntilDate")
    if mode is None or until is None or until <= datetime.now(UTC):
        return None
    return f"locked ({mode}) until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
