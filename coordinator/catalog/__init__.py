"""The coordinator's catalog, chosen by URL.

One config field (a URL) selects the embedded SQLite file (one node, ``quickstart``) or
PostgreSQL (production, several coordinators). Callers see only the :class:`Catalog`
Protocol, so the rest of the coordinator never depends on a particular backend.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import anyio

from coordinator.catalog.base import Catalog
from shared.errors import ConfigError

__all__ = ["Catalog", "open_catalog"]

_HELP = "use sqlite:///absolute/path/catalog.db or postgresql://user@host:port/dbname"


async def open_catalog(url: str) -> Catalog:
    """Open the catalog at ``url`` and bring its schema up to date.

    ``sqlite:///abs/path.db`` creates the parent folder if needed. ``postgresql://`` and
    ``postgres://`` take any libpq URL. Error messages never repeat the URL, because it
    may hold a password.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    catalog: Catalog
    if sep and scheme == "sqlite":
        path = unquote(rest.partition("?")[0])
        if not path.startswith("/"):
            raise ConfigError(f"catalog URL: the SQLite path must be absolute; {_HELP}")
        from coordinator.catalog.sqlite import SqliteCatalog

        catalog = SqliteCatalog(Path(path))
    elif sep and scheme in ("postgresql", "postgres"):
        # Imported here so that a SQLite-only node never loads libpq.
        from coordinator.catalog.postgres import PostgresCatalog

        catalog = PostgresCatalog(url)
    else:
        shown = f"scheme {scheme!r}" if sep else "a URL without a scheme"
        raise ConfigError(f"catalog URL has {shown}, which is not supported; {_HELP}")
    try:
        await catalog.migrate()
    except BaseException:
        with anyio.CancelScope(shield=True):  # close even when cancelled mid-migration
            await catalog.aclose()
        raise
    return catalog
