"""``[priority]`` in agent.toml: the CPU and I/O priority of the agent and of the dump
processes it starts (``pg_dump``, ``mariabackup``, ``redis-cli``, hooks…); applied by
:mod:`agent.priority`. Unset fields leave the priority the agent was started with."""

from __future__ import annotations

import msgspec

IONICE_CLASSES = ("idle", "best-effort", "realtime", "none")


class PriorityConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``nice``: -20 (first) to 19 (last), as ``nice -n``; below 0 needs root or
    CAP_SYS_NICE. ``ionice_class``/``ionice_level``: as ``ionice -c/-n``: ``idle`` (disk
    time only when nobody else wants it), ``best-effort`` with a level 0 (first) to 7,
    ``realtime`` (needs root) with a level, ``none`` (the I/O priority follows nice)."""

    nice: int | None = None
    ionice_class: str | None = None
    ionice_level: int | None = None

    def __post_init__(self) -> None:
        if self.nice is not None and not -20 <= self.nice <= 19:
            raise ValueError(
                f"field nice: {self.nice} is out of range; write a number from -20 (highest "
                "priority) to 19 (lowest), e.g. nice = 10"
            )
        if self.ionice_class is not None and self.ionice_class not in IONICE_CLASSES:
            raise ValueError(
                f"field ionice_class: {self.ionice_class!r} is not an I/O class; write one of "
                + ", ".join(f'"{c}"' for c in IONICE_CLASSES)
            )
        if self.ionice_level is None:
            return
        if not 0 <= self.ionice_level <= 7:
            raise ValueError(
                f"field ionice_level: {self.ionice_level} is out of range; write 0 (first) "
                "to 7 (last)"
            )
        if self.ionice_class not in ("best-effort", "realtime"):
            raise ValueError(
                f'field ionice_level: a level needs ionice_class "best-effort" or '
                f'"realtime" (it is {self.ionice_class or "unset"}); set one, or remove '
                "ionice_level"
            )
