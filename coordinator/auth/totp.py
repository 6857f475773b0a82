"""TOTP (RFC 6238, 30 s steps, 6 digits, SHA-1: what every authenticator app does) and
recovery codes.

A code is accepted for the current step and one step either side (clock drift), and at
most once: the catalog keeps each user's newest accepted step and
:meth:`claim_totp_step` moves it forward in one statement, so a code seen on the wire
cannot be replayed, on this coordinator or another one, nor can an older one.

Recovery codes (10, shown once at enrolment) stand in for a code when the phone is lost;
each works once. They carry 80 random bits, so a SHA-256 of them is kept (argon2's
slowness is for guessable passwords).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
from datetime import datetime

import msgspec
import pyotp
import segno

from coordinator.catalog.auth_base import AuthCatalog

STEP_S = 30
DIGITS = 6
WINDOW = 1  # steps accepted either side of the current one
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


class Enrolment(msgspec.Struct, frozen=True, kw_only=True):
    """What a user sees once when MFA is set up: never stored like this."""

    secret: str  # base32, for typing into an app
    uri: str  # otpauth://totp/…, the QR code's content
    recovery_codes: list[str]


def new_secret() -> str:
    return pyotp.random_base32(32)  # 160 bits, RFC 4226's recommendation


def provisioning_uri(secret: str, user: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(
        name=user, issuer_name=issuer
    )


def step_of(at: datetime) -> int:
    return int(at.timestamp()) // STEP_S


def code_at(secret: str, at: datetime) -> str:
    """The code an app shows at ``at`` (tests, and nothing else needs it)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).generate_otp(step_of(at))


def matching_step(secret: str, code: str, at: datetime, *, window: int = WINDOW) -> int | None:
    """The time step within ``window`` of ``at`` whose code is ``code``, or None."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    now = step_of(at)
    found = None
    for step in range(now - window, now + window + 1):  # all compared: constant time
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


async def verify_code(
    catalog: AuthCatalog, user: str, secret: str, code: str, at: datetime
) -> bool:
    """Accept ``code`` for ``user`` once: True only if it matches and was not used."""
    step = matching_step(secret, code, at)
    return step is not None and await catalog.claim_totp_step(user, step)


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """``count`` codes like ``k7pq-x3mz-9hrt-w2ca`` (16 characters of 31: 79 bits)."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def normalise_recovery_code(code: str) -> str:
    return "".join(code.lower().split()).replace("-", "")


def hash_recovery_code(code: str) -> str:
    digest = hashlib.sha256(b"mosaic recovery code\0" + normalise_recovery_code(code).encode())
    return digest.hexdigest()


def looks_like_recovery_code(code: str) -> bool:
    return len(normalise_recovery_code(code)) == 16


def qr_text(uri: str) -> str:
    """The QR code of ``uri`` in Unicode half blocks, for a terminal."""
    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def enrolment(user: str, issuer: str) -> Enrolment:
    secret = new_secret()
    return Enrolment(
        secret=secret,
        uri=provisioning_uri(secret, user, issuer),
        recovery_codes=new_recovery_codes(),
    )
