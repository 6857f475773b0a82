"""The strategy's validation checklist (``mosaic.api.check``, ``GET /api/v1/check``).

The coordinator computes it (coordinator/checklist.py) from the same reads as
``status`` plus the maintenance results, so the CLI (``mosaic-backup check``), the
HTTP API and a console all show one answer. Each line is ``pass``, ``fail`` or
``unknown`` (no evidence either way: not a failure, but not a proof either) with one
line of evidence and the items (dataset, agent/target, …) it was judged on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.wire.base import Msg as _Msg

Verdict = Literal["pass", "fail", "unknown"]


class CheckRequest(_Msg, frozen=True, kw_only=True, tag="check_request"):
    """Compute the checklist now. ``passed_items``: how many passing items each line
    lists at most (failing and unknown ones are always listed)."""

    passed_items: int = 20


class CheckItem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a line was judged on: a dataset, ``agent/target``, an unprotected item."""

    subject: str
    status: Verdict
    evidence: str = ""


class CheckLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the checklist. ``name`` is stable (for machines): backups, coverage,
    windows, keys, replication, compliance, drill, verify, storage."""

    name: str
    title: str
    status: Verdict
    evidence: str = ""
    passed: int = 0
    failed: int = 0
    unknown: int = 0
    items: list[CheckItem] = []  # failing first, then unknown, then (some) passing


class CheckReport(_Msg, frozen=True, kw_only=True, tag="check_report"):
    """``status``: fail when any line fails, else unknown when any line is unknown."""

    status: Verdict
    coordinator: str
    at: datetime
    lines: list[CheckLine] = []


check_report_decoder = msgspec.json.Decoder(CheckReport)
