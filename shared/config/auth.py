"""``[auth]`` in coordinator.toml: sessions, login lockout and MFA for the people and
scripts that use the coordinator (coordinator/auth/).

- ``session_idle_s`` / ``session_absolute_s``: a console session ends after this long
  without a request, and this long after its login whatever happens.
- ``lockout_failures`` failed logins for one user name within ``lockout_s`` lock that
  name for ``lockout_s``; ``lockout_address_failures`` do the same for one source
  address (higher: several people may share a NAT address).
- ``mfa_required_roles``: roles whose users must log in with a TOTP code too; a user of
  another role may still enrol (``mosaic-backup users add --mfa``).
- ``anonymous_metrics``: ``/metrics`` answers without a token only when this is true;
  otherwise Prometheus presents a viewer token.
- ``totp_issuer``: the issuer an authenticator app shows beside the account.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.config.types import PositiveFloat

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")  # each may do what the ones before may


def _default_mfa_roles() -> list[Role]:
    return ["admin"]


class AuthConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[auth]``: see the module docstring."""

    session_idle_s: PositiveFloat = 1800.0
    session_absolute_s: PositiveFloat = 43200.0
    lockout_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    lockout_address_failures: Annotated[int, msgspec.Meta(ge=1)] = 20
    lockout_s: PositiveFloat = 900.0
    mfa_required_roles: list[Role] = msgspec.field(default_factory=_default_mfa_roles)
    anonymous_metrics: bool = False
    totp_issuer: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "mosaic-backup"

    def __post_init__(self) -> None:
        if self.session_idle_s > self.session_absolute_s:
            raise ValueError(
                f"field session_idle_s: {self.session_idle_s:g} s is longer than "
                f"session_absolute_s ({self.session_absolute_s:g} s); make it at most that"
            )

    def mfa_required(self, role: Role) -> bool:
        return role in self.mfa_required_roles
