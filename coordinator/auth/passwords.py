"""Password hashing with argon2id (argon2-cffi's PasswordHasher, RFC 9106 parameters).

A stored hash carries its own parameters (PHC string), so raising them later needs no
migration: a successful login rehashes a password whose hash ``needs_rehash``.
``dummy_verify`` runs one verification against a fixed hash so that a login for an
unknown user name costs as long as one for a known name (no enumeration by timing).
"""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coordinator.auth.errors import AuthInputError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 takes any length; this bounds the work per login

DEFAULT_HASHER = PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4 (RFC 9106 "low memory")


def check_strength(password: str, *, what: str = "password") -> None:
    """Refuse a password a user should not have; the message says what would do."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthInputError(
            f"{what} has {len(password)} characters, fewer than the minimum "
            f"{MIN_PASSWORD_LENGTH}; choose a longer one (a passphrase of a few words)"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AuthInputError(f"{what} is longer than {MAX_PASSWORD_LENGTH} characters")
    if password != password.strip() or "\n" in password:
        raise AuthInputError(f"{what} starts or ends with white space or holds a line break")


def hash_password(password: str, *, hasher: PasswordHasher = DEFAULT_HASHER) -> str:
    return hasher.hash(password)


def verify_password(stored: str, password: str, *, hasher: PasswordHasher = DEFAULT_HASHER) -> bool:
    """True if ``password`` matches ``stored``; False for a mismatch or a damaged hash."""
    try:
        return hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str, *, hasher: PasswordHasher = DEFAULT_HASHER) -> bool:
    try:
        return hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash("not a password of anyone: equalises login timing")


def dummy_verify(password: str, *, hasher: PasswordHasher = DEFAULT_HASHER) -> None:
    """The work of one verification, for a user name that does not exist."""
    verify_password(_dummy_hash(hasher), password, hasher=hasher)
