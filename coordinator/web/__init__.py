"""The operators' console: a web application in a process of its own.

``mosaic-backup console run --config coordinator.toml`` serves it (``[web]``). It reads
what it shows from the catalog and NATS exactly as a coordinator does (the same status
builder, heartbeats, coverage and window fillers), so whichever machine runs it, and
whichever coordinator is active, it answers the same; it acts only through the operator
API on NATS, as the CLI does, with the logged-in user's name in the audit trail. It
never reads backup data: file trees and downloads come from an agent that holds the key.

Layout:

- ``server.py``: the process: catalog, NATS, the status parts, the aiohttp app.
- ``context.py``: :class:`~coordinator.web.context.WebContext`, what every page gets.
- ``guard.py``: who is asking (:class:`~coordinator.web.guard.User`) and
  :func:`~coordinator.web.guard.require`, the one role check every handler declares.
- ``auth.py``: sessions, CSRF, API tokens and security headers: the middleware that sets
  the user of each request; ``login.py`` the two-step login (password, then TOTP) and
  logout; ``authparts.py`` the auth stores the pages share.
- ``pages/``: one module per page or group of pages, each with ``routes(ctx)``;
  ``view.py`` (formatting, paging, the 30-day strip), ``charts.py`` (server-rendered
  SVG) and ``progress.py`` (the live progress feed: one NATS subscription per process,
  server-sent events to the browsers) serve them.
- ``templates/`` (Jinja2, autoescaped) and ``static/`` (CSS, the small script that
  follows live progress), shipped in the package: ``pip install .`` brings the console.
"""
