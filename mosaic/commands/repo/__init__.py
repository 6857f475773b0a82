"""``mosaic-backup repo …``: tools that work on one repository directly, on the agent's
host, with the agent's config and key (verify, keys, export, …). They need no NATS and
no coordinator, so they still work when the rest of the system is down.

Each tool is a module here with ``register(sub)`` that adds its actions to the ``repo``
parser and sets ``func=async (args, out, err) -> int`` on each; :mod:`._common` holds
the shared options and the helpers that open the repository.
"""

from __future__ import annotations

import argparse

from mosaic.commands.repo import (
    backup,
    catalog,
    diff,
    export,
    find,
    keys,
    locks,
    mount,
    prune,
    repair,
    replicate,
    verify,
)

HELP = "work on a repository directly (on the agent's host)"
TOOLS = (
    backup,
    keys,
    verify,
    export,
    diff,
    find,
    mount,
    catalog,
    prune,
    locks,
    repair,
    replicate,
)


def register(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for tool in TOOLS:
        tool.register(actions)
