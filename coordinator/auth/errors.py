"""The errors of access control (tree in the package docstring)."""

from __future__ import annotations

from shared.errors import MosaicError


class AuthError(MosaicError):
    code = "auth"


class AuthInputError(AuthError):
    """A change to users or tokens that cannot be made as asked."""

    code = "auth_input"


class LoginRefused(AuthError):
    """A login failed; the message never says which part was wrong."""

    code = "login_refused"


class TokenRefused(AuthError):
    """An API token was not accepted; the message never says why."""

    code = "token_refused"
