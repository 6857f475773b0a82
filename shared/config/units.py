"""Sizes and rates written in config files (``"20MiB"``, ``"512 KiB/s"``, ``1048576``).

One parser for every field that takes a number of bytes, so that every field accepts
the same spellings and refuses a bad one with the same fix. Units, case-insensitive:
``B``; ``K``/``KiB``, ``M``/``MiB``, ``G``/``GiB``, ``T``/``TiB`` (powers of 1024, the
way ``rsync --bwlimit`` and ``ionice`` users expect a bare letter); ``kB``, ``MB``,
``GB``, ``TB`` (powers of 1000, as disks and networks are sold). A rate may end in
``/s``; it is the same number of bytes per second.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
SIZE_EXAMPLES = '"20MiB", "512KiB", "1.5GiB" or a number of bytes'


def parse_size(value: str | int) -> int:
    """Bytes in ``value``; ValueError (saying what was wrong) for anything else.

    A size of 0 or a fraction of a byte is refused: no field means "nothing" by 0."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (write {SIZE_EXAMPLES})")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(value)
        factor = _UNITS.get(m.group(2).lower()) if m else None
        if m is None or factor is None:
            raise ValueError(f"{value!r} is not a size (write {SIZE_EXAMPLES})")
        n = int(float(m.group(1)) * factor)
    if n < 1:
        raise ValueError(f"{value!r} is not a positive size (write {SIZE_EXAMPLES})")
    return n


def parse_rate(value: str | int) -> int:
    """Bytes per second in ``value`` (a size, optionally ending in ``/s``)."""
    text = value.strip().removesuffix("/s") if isinstance(value, str) else value
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate in bytes per second (write {SIZE_EXAMPLES}, "
            'optionally ending in "/s")'
        ) from None
