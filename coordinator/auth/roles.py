"""Roles and what each may do: viewer (read), operator (backups, restores, drills,
verifies), admin (users, tokens, policy). Each role may do everything the roles below
it may.

:data:`VERB_ROLES` is the one table: every operator API verb (``mosaic.api.<verb>``,
coordinator/service.py ``_operator_api``) and every console/HTTP action, with the least
role that may use it. A verb missing from the table is refused for everyone (fail
closed); tests/test_auth.py checks that every registered API verb is in it.
"""

from __future__ import annotations

from coordinator.auth.errors import AuthInputError
from shared.config.auth import ROLES, Role

_RANK = {role: i for i, role in enumerate(ROLES)}

VERB_ROLES: dict[str, Role] = {
    # the operator NATS API
    "list": "viewer",
    "status": "viewer",
    "maintenance": "viewer",  # verify/prune/replicate/drill results
    "check": "viewer",  # the readiness checklist
    "backup": "operator",
    "restore": "operator",
    "drill": "operator",
    "drill_host": "operator",
    "verify": "operator",
    # console and HTTP actions (the API verbs above are actions too)
    "view": "viewer",  # every page and GET of the JSON API, /metrics
    "users": "admin",  # add, change, disable users
    "tokens": "admin",  # create, revoke API tokens
    "policy": "admin",  # change datasets, schedules, retention, alert routes
}


def parse_role(text: str, *, what: str = "--role") -> Role:
    """The role named ``text``; an unknown name is refused naming the allowed ones."""
    for role in ROLES:
        if text == role:
            return role
    raise AuthInputError(f"{what} {text!r} is not a role; use one of: {', '.join(ROLES)}")


def at_least(role: Role, needed: Role) -> bool:
    return _RANK[role] >= _RANK[needed]


def allows(role: Role, verb: str) -> bool:
    """Whether ``role`` may do ``verb``; False for a verb the table does not know."""
    needed = VERB_ROLES.get(verb)
    return needed is not None and at_least(role, needed)


def verbs_of(role: Role) -> list[str]:
    """What ``role`` may do, sorted (for docs and ``users list``)."""
    return sorted(v for v in VERB_ROLES if allows(role, v))
