"""Alert notifications through Apprise: the ``[[notify]]`` routes of coordinator.toml.

A sink like the NATS stream and the Alertmanager webhook (coordinator/alert_sinks.py):
it receives each evaluation's transitions and never raises for a failed delivery.

- **Routing**: a route takes the transitions whose severity, rule and dataset (shell
  globs) it lists (empty lists: all), and resolutions only when ``resolved`` is on.
- **Grouping**: everything one evaluation brought a route is one message, whatever the
  number of datasets: an outage of 200 datasets is one message naming the rules, the
  first datasets and "and 190 more", not 200 messages.
- **Rate limit**: at most ``max_per_hour`` messages per route in any hour. What arrives
  beyond that is held and goes out as one message at the first evaluation the limit
  allows again, so nothing is dropped and a flapping alert cannot flood a phone.
- **Secrets**: a route's URLs are read once (``url`` or ``url_file``) and only handed to
  Apprise; logs name the route and the URL's scheme, never the URL.

Apprise's senders are blocking; they run in a worker thread, one route at a time.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from shared.config.notify import NotifyRoute, read_urls, scheme
from shared.wire.monitoring import Alert

log = logging.getLogger(__name__)

HOUR_S = 3600.0
MAX_DATASETS_NAMED = 10
MAX_LINES = 30
Sender = Callable[[list[str], str, str, str], bool]  # urls, title, body, type → delivered


def matches(route: NotifyRoute, a: Alert) -> bool:
    if a.status == "resolved" and not route.resolved:
        return False
    if a.severity not in route.severities:
        return False
    if route.rules and a.rule not in route.rules:
        return False
    return not route.datasets or any(fnmatch.fnmatchcase(a.dataset, g) for g in route.datasets)


def _named(names: list[str], most: int) -> str:
    distinct = list(dict.fromkeys(names))
    shown = ", ".join(distinct[:most])
    return shown + (f" and {len(distinct) - most} more" if len(distinct) > most else "")


def _line(a: Alert) -> str:
    mark = "RESOLVED" if a.status == "resolved" else a.severity.upper()
    where = f"{a.dataset}/{a.target}" if a.target else a.dataset
    return f"{mark} {a.rule} {where}: {a.summary}"


def fields(alerts: Sequence[Alert]) -> dict[str, object]:
    """The template fields of one message (shared/config/notify.py TEMPLATE_FIELDS)."""
    firing = [a for a in alerts if a.status == "firing"]
    resolved = len(alerts) - len(firing)
    lines = [_line(a) for a in alerts[:MAX_LINES]]
    if len(alerts) > MAX_LINES:
        lines.append(f"… and {len(alerts) - MAX_LINES} more")
    first = alerts[0]
    return {
        "status": "/".join(s for s, n in (("FIRING", firing), ("RESOLVED", resolved)) if n),
        "count": len(alerts),
        "firing": len(firing),
        "resolved": resolved,
        "severity": "critical" if any(a.severity == "critical" for a in firing) else "warning",
        "rules": _named([a.rule for a in alerts], MAX_DATASETS_NAMED),
        "datasets": _named([a.dataset for a in alerts], MAX_DATASETS_NAMED),
        "lines": "\n".join(lines),
        "coordinator": first.coordinator,
        "rule": first.rule,
        "dataset": first.dataset,
        "summary": first.summary,
        "description": first.description,
    }


def apprise_send(urls: list[str], title: str, body: str, kind: str) -> bool:
    import apprise

    box = apprise.Apprise()
    for url in urls:
        box.add(url)
    return bool(box.notify(title=title, body=body, notify_type=kind))


@dataclass
class Route:
    """One route's URLs, the transitions it holds back, and when it last sent."""

    cfg: NotifyRoute
    urls: list[str]
    held: list[Alert] = field(default_factory=list)
    sent_at: deque[float] = field(default_factory=deque)

    def allowed(self, now: float) -> bool:
        while self.sent_at and now - self.sent_at[0] >= HOUR_S:
            self.sent_at.popleft()
        return len(self.sent_at) < self.cfg.max_per_hour


class AppriseSink:
    """The ``[[notify]]`` routes as one alert sink."""

    def __init__(
        self,
        routes: Sequence[NotifyRoute],
        *,
        send: Sender = apprise_send,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.routes = [
            Route(r, read_urls(f"notify route {r.name}", r.url, r.url_file)) for r in routes
        ]
        self.send_fn = send
        self.clock = clock
        # Apprise logs the URLs it sends to, and urllib3 (under it) each request's path,
        # tokens included, even at DEBUG: keep both quiet in the coordinator's process
        logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
        logging.getLogger("urllib3").setLevel(logging.CRITICAL + 1)
        self.messages = 0  # delivered (for tests and /metrics)

    async def send(self, alerts: Sequence[Alert]) -> None:
        now = self.clock()
        for route in self.routes:
            route.held += [a for a in alerts if matches(route.cfg, a)]
            if route.held and route.allowed(now):
                batch, route.held = route.held, []
                route.sent_at.append(now)
                await self._deliver(route, batch)
            elif route.held:
                log.info(
                    "notify route %s: %d alert(s) held (max_per_hour %d reached)",
                    route.cfg.name,
                    len(route.held),
                    route.cfg.max_per_hour,
                )

    async def _deliver(self, route: Route, batch: list[Alert]) -> None:
        values = fields(batch)
        title = route.cfg.title.format_map(values)
        body = route.cfg.body.format_map(values)
        kind = "success" if not values["firing"] else str(values["severity"])
        kind = {"critical": "failure", "warning": "warning"}.get(kind, kind)
        try:
            ok = await anyio.to_thread.run_sync(self.send_fn, route.urls, title, body, kind)
        except Exception as exc:  # a sender's bug must not stop the alerter
            log.error("notify route %s failed: %s", route.cfg.name, type(exc).__name__)
            ok = False
        if ok:
            self.messages += 1
            return
        log.error(
            "notify route %s: %d alert(s) not delivered to %s",
            route.cfg.name,
            len(batch),
            ", ".join(scheme(u) for u in route.urls),
        )
