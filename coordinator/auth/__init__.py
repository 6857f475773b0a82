"""Access control: local users (argon2id passwords, TOTP MFA, recovery codes), roles,
API tokens for service accounts, console sessions, login lockout.

Everything is kept in the catalog (coordinator/catalog/auth_base.py), so every
coordinator answers the same. Modules:

- ``passwords``: argon2id hashing, strength check, rehash when the parameters change;
- ``totp``: RFC 6238 codes (±1 step, each accepted once), enrolment, recovery codes;
- ``roles``: viewer / operator / admin, and the least role each verb and action needs;
- ``store``: adding and changing users (with audit entries);
- ``tokens``: API tokens (``mbk_<id>_<secret>``; only a SHA-256 of the secret is kept);
- ``sessions``: server-side console sessions, CSRF tokens, cookie attributes;
- ``lockout``: the login itself, rate-limited per user name and per source address.

Errors (``errors``)::

    AuthError (shared.errors.MosaicError)
    ├── AuthInputError   a user or token change refused: unknown role, weak password,
    │                    duplicate or unknown name (one line, names the fix)
    ├── LoginRefused     one generic message, whatever was wrong (HTTP 401)
    └── TokenRefused     unknown, malformed, expired or revoked token (HTTP 401)
"""
