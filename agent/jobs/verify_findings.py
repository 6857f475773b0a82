"""A verify report as the wire carries it (``VerifyCompleted.findings``): one entry per
damaged object, for ``mosaic-backup verify --detailed``."""

from __future__ import annotations

from engine.maintenance.verify import VerifyReport
from shared.wire.events import VerifyFinding

MAX_MESSAGES = 5  # per object: the first few say what is wrong; the count says the rest


def findings(rep: VerifyReport) -> list[VerifyFinding]:
    """Every damaged object, by name, with the backups it breaks (sorted)."""
    out: list[VerifyFinding] = []
    for name in sorted(rep.problems):
        p = rep.problems[name]
        messages = p.messages[:MAX_MESSAGES]
        if len(p.messages) > MAX_MESSAGES:
            messages.append(f"… and {len(p.messages) - MAX_MESSAGES} more")
        out.append(
            VerifyFinding(
                obj=name,
                messages=messages,
                backups=sorted(p.backups),
                files=sum(len(f) for f in p.files.values()),
                repair=p.repair,
            )
        )
    return out
