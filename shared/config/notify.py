"""``[[notify]]`` and ``[[pings]]`` in coordinator.toml: where people hear about alerts.

- ``[[notify]]`` routes alert transitions to Apprise URLs (ntfy, Slack, Matrix, Telegram,
  Discord, Gotify, Pushover, e-mail, JSON webhooks …; coordinator/notify.py sends them),
  filtered by severity, rule and dataset, with templated title and body. Everything one
  evaluation produced for a route goes out as one message, and at most
  ``max_per_hour`` messages leave a route per hour: the rest wait and go out together.
- ``[[pings]]`` is a dead-man's switch per dataset (coordinator/pings.py): a
  Healthchecks-style check gets ``/start``, success and ``/fail`` pings from each
  backup, an Uptime Kuma push monitor ``status=up`` or ``status=down``; the outside
  service notices when nothing arrives.

URLs carry tokens: ``url_file`` names a file holding the URL (one per line for a route),
read when the coordinator starts; neither the URL nor the file's content is ever
logged, shown or put in an error (only the scheme is).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from shared.config.types import Name
from shared.errors import ConfigError

Severity = Literal["critical", "warning"]

# What title and body templates may name (``{count}``, ``{lines}`` …; coordinator/notify.py).
TEMPLATE_FIELDS = frozenset(
    {
        "status",  # FIRING, RESOLVED, or FIRING/RESOLVED for a mixed message
        "count",  # transitions in the message
        "firing",
        "resolved",
        "severity",  # the worst of them
        "rules",  # the distinct rule names, comma-separated
        "datasets",  # up to 10 dataset names, then "and N more"
        "lines",  # one line per transition (up to 30, then "… and N more")
        "coordinator",
        "rule",  # the first transition's (for one-alert messages)
        "dataset",
        "summary",
        "description",
    }
)
DEFAULT_TITLE = "[{status}] {rules}: {datasets}"
DEFAULT_BODY = "{lines}"


class NotifyRoute(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[notify]]`` route.

    - ``name``: for logs and the docs' examples.
    - ``url`` / ``url_file``: an Apprise URL, or a file with one or more (one per line);
      exactly one of the two.
    - ``severities``, ``rules``, ``datasets``: which alerts (datasets are shell globs);
      an empty list means all.
    - ``resolved``: also send resolutions.
    - ``title``, ``body``: templates with the fields of :data:`TEMPLATE_FIELDS`.
    - ``max_per_hour``: messages per hour at most; the rest are held and sent together.
    """

    name: Name
    url: str | None = None
    url_file: str | None = None
    severities: list[Severity] = msgspec.field(default_factory=lambda: ["critical", "warning"])
    rules: list[str] = []
    datasets: list[str] = []
    resolved: bool = True
    title: str = DEFAULT_TITLE
    body: str = DEFAULT_BODY
    max_per_hour: Annotated[int, msgspec.Meta(ge=1)] = 20


class PingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[pings]]`` entry: a dead-man's switch for the datasets it matches.

    - ``kind``: ``healthchecks`` (the URL gets ``/start`` when a backup starts, nothing
      on success, ``/fail`` on failure — Healthchecks.io and its self-hosted form) or
      ``uptime_kuma`` (a push monitor's URL; ``?status=up&msg=…&ping=<ms>`` on success,
      ``status=down`` on failure).
    - ``url`` / ``url_file``: exactly one; ``{dataset}`` in it is replaced by the
      dataset's name (Healthchecks' slug URLs: one entry for every dataset).
    - ``datasets``: shell globs of the datasets it covers; empty: all.
    - ``start``: send the start ping (healthchecks only; measures the run time).
    """

    kind: Literal["healthchecks", "uptime_kuma"] = "healthchecks"
    url: str | None = None
    url_file: str | None = None
    datasets: list[str] = []
    start: bool = True


def scheme(url: str) -> str:
    """What may be said of a URL in an error: its scheme."""
    head, sep, _ = url.partition("://")
    return f"{head}://…" if sep else "(no scheme)"


def read_urls(where: str, url: str | None, url_file: str | None) -> list[str]:
    """The URL(s) of a route or ping: ``url``, or the non-empty lines of ``url_file``
    (``#`` starts a comment). Raises ConfigError naming ``where`` and the field."""
    if (url is None) == (url_file is None):
        raise ConfigError(f"{where}: set exactly one of url and url_file")
    if url is not None:
        return [url.strip()]
    assert url_file is not None
    try:
        text = Path(url_file).read_text()
    except OSError as exc:
        raise ConfigError(
            f"{where}.url_file: cannot read {url_file} ({exc.strerror}): create it with the "
            "URL, mode 0600"
        ) from None
    urls = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not urls:
        raise ConfigError(f"{where}.url_file: {url_file} holds no URL: write one per line")
    return urls


def check_template(where: str, text: str) -> None:
    for _, field, _, _ in string.Formatter().parse(text):
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS:
            known = ", ".join(sorted(TEMPLATE_FIELDS))
            raise ConfigError(f"{where}: unknown template field {{{field}}} (known: {known})")


def check_routes(routes: list[NotifyRoute], pings: list[PingConfig]) -> None:
    """What msgspec cannot check: every URL one Apprise can send to, templates that
    name known fields, ping URLs that are http(s). One line each, no secret in it."""
    import logging

    import apprise  # only for a config that has routes: it takes a while to import

    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)  # it would log the URL

    for i, r in enumerate(routes):
        where = f"field 'notify[{i}]' ({r.name})"
        for field, text in (("title", r.title), ("body", r.body)):
            try:
                check_template(f"{where}.{field}", text)
            except ValueError as exc:  # an unbalanced brace
                raise ConfigError(f"{where}.{field}: {exc}") from None
        for url in read_urls(where, r.url, r.url_file):
            if not apprise.Apprise().add(url):
                raise ConfigError(
                    f"{where}.{'url' if r.url else 'url_file'}: Apprise cannot send to "
                    f"{scheme(url)}: see the URL forms at https://github.com/caronc/apprise/wiki"
                )
    for i, p in enumerate(pings):
        where = f"field 'pings[{i}]'"
        for url in read_urls(where, p.url, p.url_file):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}: {scheme(url)} is not an http:// or https:// URL")
