"""Log output for the daemons: human text (default) or one JSON object per line.

JSON lines carry ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, when
the line was logged inside a span, ``trace_id`` and ``span_id`` in the hex form Jaeger
shows, so a log search and a trace lead to each other. An exception adds ``exc_type``
and ``exc`` (the formatted traceback). Messages are what the code logged: the code never
logs secrets, and this formatter adds none.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

from shared import tracing
from shared.errors import ConfigError

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; trace and span ids of the span current when logged
    (handlers format in the logging call's own thread and context)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = tracing.ids()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def parse_format(value: str, where: str) -> LogFormat:
    """``text`` or ``json`` (any case), else a ConfigError naming ``where``."""
    v = value.strip().lower()
    if v == "text":
        return "text"
    if v == "json":
        return "json"
    raise ConfigError(f"{where}: log format {value!r} is unknown (use 'text' or 'json')")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that a second :func:`configure` replaces it and nothing else."""


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure(level: str | int, fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Set up the root logger at an entry point. Like ``logging.basicConfig``, it leaves a
    root logger alone that someone else (an embedding program, pytest) has set up."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Handler):
            root.removeHandler(old)
    if root.handlers:
        return
    if isinstance(level, str):
        name = level.strip().upper()
        if name not in LEVELS:
            raise ConfigError(
                f"MOSAIC_LOG_LEVEL={level!r} is not a log level; use one of {', '.join(LEVELS)}"
            )
        level = name
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
