"""Upload and download rate limits of a target, optionally by time of day.

Every ``[targets.NAME]`` section has the fields of :class:`TargetLimits` (the target
configs inherit them): ``upload_limit`` and ``download_limit`` in bytes per second, and
``[[targets.NAME.limit_schedule]]`` windows of the agent's local time that set other
limits while they last. :class:`RatePlan` is the parsed, pure form that
:mod:`engine.storage.ratelimit` asks "what is the limit now?".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from shared.config.units import parse_rate

UNLIMITED = "unlimited"
DAY = 24 * 60  # minutes
_HOURS = re.compile(r"^\s*(\d\d):(\d\d)\s*-\s*(\d\d):(\d\d)\s*$")
_HOURS_FIX = (
    'write "HH:MM-HH:MM" in the agent\'s local time, such as "08:00-18:00" '
    '(it may wrap midnight: "22:00-06:00"; all day is "00:00-24:00")'
)


def _rate(field: str, value: str | int | None) -> int | None:
    """Bytes per second, None for no limit (unset, or ``"unlimited"``)."""
    if value is None or value == UNLIMITED:
        return None
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise ValueError(f'field {field}: {exc}, or "{UNLIMITED}"') from None


def parse_hours(text: str) -> tuple[int, int]:
    """(start, end) minutes of the day in ``"HH:MM-HH:MM"``; end ≤ start wraps midnight."""
    m = _HOURS.match(text)
    if m is None:
        raise ValueError(f"field hours: {text!r} is not a range of times; {_HOURS_FIX}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > DAY:
        raise ValueError(f"field hours: {text!r} holds a time that does not exist; {_HOURS_FIX}")
    if start == end % DAY and end != DAY:
        raise ValueError(f"field hours: {text!r} starts where it ends; {_HOURS_FIX}")
    return start, end


def _minutes(start: int, end: int) -> list[int]:
    """The minutes of the day from ``start`` to ``end`` (wrapping midnight)."""
    if start < end:
        return list(range(start, end))
    return [*range(start, DAY), *range(0, end)]


class LimitWindow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[targets.NAME.limit_schedule]]``: other limits from ``hours`` start to end
    (local time of the agent; ``"22:00-06:00"`` wraps midnight). A limit left out keeps
    the target's own; ``"unlimited"`` lifts it for the window."""

    hours: str
    upload: str | int | None = None
    download: str | int | None = None

    def __post_init__(self) -> None:
        parse_hours(self.hours)
        _rate("upload", self.upload)
        _rate("download", self.download)
        if self.upload is None and self.download is None:
            raise ValueError(
                f"field hours: the window {self.hours!r} sets no limit "
                '(add upload = "…" and/or download = "…", or remove the window)'
            )


class TargetLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rate limits, in every ``[targets.NAME]`` section (bytes per second, shared by
    everything the agent sends to or reads from that target at the same time)."""

    upload_limit: str | int | None = None
    download_limit: str | int | None = None
    limit_schedule: list[LimitWindow] = []

    def __post_init__(self) -> None:
        _rate("upload_limit", self.upload_limit)
        _rate("download_limit", self.download_limit)
        owner: dict[int, int] = {}
        for i, window in enumerate(self.limit_schedule):
            for minute in _minutes(*parse_hours(window.hours)):
                if minute in owner:
                    j = owner[minute]
                    raise ValueError(
                        f"field limit_schedule: windows {j} ({self.limit_schedule[j].hours}) "
                        f"and {i} ({window.hours}) overlap at "
                        f"{minute // 60:02d}:{minute % 60:02d}; make their hours disjoint"
                    )
                owner[minute] = i

    def rate_plan(self) -> RatePlan:
        """The limits parsed once, for the limiter to look up at every transfer."""
        upload = _rate("upload_limit", self.upload_limit)
        download = _rate("download_limit", self.download_limit)
        windows = []
        for w in self.limit_schedule:
            start, end = parse_hours(w.hours)
            up = upload if w.upload is None else _rate("upload", w.upload)
            down = download if w.download is None else _rate("download", w.download)
            windows.append(_Window(start, end, up, down))
        return RatePlan(upload=upload, download=download, windows=tuple(windows))


@dataclass(frozen=True)
class _Window:
    start: int  # minute of the day
    end: int  # ≤ start: wraps midnight
    upload: int | None
    download: int | None

    def holds(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True)
class RatePlan:
    """Bytes per second (None: no limit) at each minute of the day."""

    upload: int | None
    download: int | None
    windows: tuple[_Window, ...] = ()

    def limited(self) -> bool:
        """Whether any limit applies at any time (else no limiter is needed)."""
        rates = [self.upload, self.download]
        rates += [r for w in self.windows for r in (w.upload, w.download)]
        return any(r is not None for r in rates)

    def _window(self, minute: int) -> _Window | None:
        return next((w for w in self.windows if w.holds(minute % DAY)), None)

    def upload_at(self, minute: int) -> int | None:
        w = self._window(minute)
        return w.upload if w is not None else self.upload

    def download_at(self, minute: int) -> int | None:
        w = self._window(minute)
        return w.download if w is not None else self.download
