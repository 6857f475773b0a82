"""3-2-1 compliance per dataset: three copies, on two media, one of them offsite.

Pure logic on plain values, apart from the I/O that finds which targets hold a
dataset's latest backup, so the rule can be tested and explained without servers. The
production data counts as one copy (by default an onsite disk); each target holding the
dataset's latest backup counts as one more, with the ``media`` and ``location`` tags of
its config. Two targets on the same medium and place still count as two copies — the
rule asks for copies, media and offsite separately, and each shortfall gets its own
human reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shared.config.targets import TargetConfig

Location = Literal["onsite", "offsite"]

MIN_COPIES = 3
MIN_MEDIA = 2
MIN_OFFSITE = 1


@dataclass(frozen=True)
class Copy:
    """One copy of a dataset: production or a target holding its latest backup."""

    name: str
    media: str
    location: Location


PRODUCTION = Copy("production", "disk", "onsite")


@dataclass(frozen=True)
class Compliance:
    copies: int
    media: tuple[str, ...]
    offsite: int
    reasons: tuple[str, ...]

    @property
    def compliant(self) -> bool:
        return not self.reasons


def copy_of(name: str, cfg: TargetConfig) -> Copy:
    """A target's copy, tagged from its config."""
    return Copy(name, cfg.media, cfg.location)


def evaluate(targets: Sequence[Copy], *, production: Copy | None = PRODUCTION) -> Compliance:
    """3-2-1 for one dataset; ``targets`` are those holding its latest backup.

    ``production=None`` for a dataset whose live data is not a copy (already gone, or an
    export that exists only in backups).
    """
    copies = [*([production] if production else []), *targets]
    media = tuple(sorted({c.media for c in copies}))
    offsite = sum(c.location == "offsite" for c in copies)
    reasons = []
    if len(copies) < MIN_COPIES:
        reasons.append(
            "no copies"
            if not copies
            else f"only {len(copies)} cop{'y' if len(copies) == 1 else 'ies'}"
        )
    if len(media) < MIN_MEDIA:
        reasons.append("one medium" if media else "no medium")
    if offsite < MIN_OFFSITE:
        reasons.append("no offsite copy")
    return Compliance(len(copies), media, offsite, tuple(reasons))
