"""The console's pages: one module per page or group, each with ``routes(ctx)``
returning its aiohttp route definitions (every handler wrapped in
:func:`coordinator.web.guard.require`). ``PAGES`` is the order they are added in."""

PAGES: tuple[str, ...] = (
    "admin",
    "monitoring",
    "overview",
    "datasets",
    "backups",
    "drills",
    "audit",
    "agents",
    "alerts",
    "browse",
    "actions",
)
