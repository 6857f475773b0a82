"""The options several commands share, one copy each: how to reach NATS (URL, user,
password file, NKEY seed file, TLS files and the operator profile holding them), who
asks (``--as``), whether to wait (``--no-wait``, ``--timeout``) and the log format.

Where a NATS setting comes from, first match wins: the flag, its ``$MOSAIC_NATS_*``
variable, the operator profile, the default. The profile is a TOML file with the keys
of :class:`~shared.config.nats.NatsClientConfig` (the ones agent.toml and
coordinator.toml use at their top level)::

    nats_url = "tls://nats.example:4222"
    nats_user = "operator"
    nats_password_file = "creds/operator.password"   # relative: to the profile's folder

``--profile FILE``, else ``$MOSAIC_PROFILE``, else ``~/.config/mosaic-backup/operator.toml``
(``$XDG_CONFIG_HOME`` when set); a missing default profile means no profile. It names a
password file, never a password: secrets stay in their own 0600 files.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from shared.config.nats import DEFAULT_NATS_URL, NatsClientConfig
from shared.errors import BusError, ConfigError, NoCoordinator

if TYPE_CHECKING:
    from shared.bus import Bus

PROFILE_ENV = "MOSAIC_PROFILE"
# (flag dest, NatsClientConfig field, environment variable)
_NATS_FIELDS = (
    ("nats", "nats_url", "MOSAIC_NATS_URL"),
    ("nats_user", "nats_user", "MOSAIC_NATS_USER"),
    ("nats_password_file", "nats_password_file", "MOSAIC_NATS_PASSWORD_FILE"),
    ("nats_nkey_seed_file", "nats_nkey_seed_file", "MOSAIC_NATS_NKEY_SEED_FILE"),
    ("nats_tls_ca", "nats_tls_ca", "MOSAIC_NATS_TLS_CA"),
    ("nats_tls_cert", "nats_tls_cert", "MOSAIC_NATS_TLS_CERT"),
    ("nats_tls_key", "nats_tls_key", "MOSAIC_NATS_TLS_KEY"),
)
_FILE_FIELDS = (
    "nats_password_file",
    "nats_nkey_seed_file",
    "nats_tls_ca",
    "nats_tls_cert",
    "nats_tls_key",
)


def add_nats_args(p: argparse.ArgumentParser) -> None:
    """Every operator command's way to NATS. Defaults are None here: the variables and
    the profile are consulted by :func:`nats_client_config`, in that order."""
    p.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help=f"operator profile with the NATS settings below (default: ${PROFILE_ENV} or "
        "~/.config/mosaic-backup/operator.toml if it exists)",
    )
    p.add_argument(
        "--nats",
        default=None,
        help="NATS URL of the coordinator's bus, or the servers of a NATS cluster separated "
        "by commas (default: $MOSAIC_NATS_URL, the profile's "
        f"nats_url, or {DEFAULT_NATS_URL})",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up connecting to NATS after S seconds (default: the profile's "
        "connect_timeout_s, or 10)",
    )
    p.add_argument(
        "--nats-user",
        default=None,
        help="NATS user (default: $MOSAIC_NATS_USER or the profile's nats_user; "
        "`nats-config` makes one named operator)",
    )
    p.add_argument(
        "--nats-password-file",
        default=None,
        help="file holding that user's password (default: $MOSAIC_NATS_PASSWORD_FILE or "
        "the profile's nats_password_file)",
    )
    p.add_argument(
        "--nats-nkey-seed-file",
        default=None,
        help="NKEY seed file instead of a password (default: $MOSAIC_NATS_NKEY_SEED_FILE "
        "or the profile's nats_nkey_seed_file)",
    )
    for part, what in (("ca", "CA certificate"), ("cert", "client certificate"), ("key", "key")):
        p.add_argument(
            f"--nats-tls-{part}",
            default=None,
            help=f"TLS {what} for NATS (default: $MOSAIC_NATS_TLS_{part.upper()} or the "
            f"profile's nats_tls_{part})",
        )


def profile_path(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Path, str]:
    """The profile to read and where its name came from (``--profile``, the variable, or
    ``default`` for the one a user need not have)."""
    if args.profile is not None:
        return Path(args.profile), "--profile"
    if environ.get(PROFILE_ENV):
        return Path(environ[PROFILE_ENV]), f"${PROFILE_ENV}"
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "mosaic-backup" / "operator.toml", "default"


def load_profile(path: Path, origin: str) -> NatsClientConfig:
    """The profile at ``path``; the default profile may be absent, a named one not.
    Relative file names in it are taken from the profile's folder."""
    from msgspec.structs import replace

    from shared.config.load import load  # TOML and msgspec: only for NATS commands

    if not path.is_file():
        if origin == "default":
            return NatsClientConfig()
        raise ConfigError(
            f"operator profile {path} (from {origin}) does not exist: create it with the "
            "NATS settings (nats_url, nats_user, nats_password_file, …) or name another"
        )
    cfg = load(path, NatsClientConfig)
    folder = path.parent
    files = {f: str(folder / v) for f in _FILE_FIELDS if (v := getattr(cfg, f)) is not None}
    return replace(cfg, **files)


def nats_client_config(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> NatsClientConfig:
    """The options of :func:`add_nats_args` with the variables and the profile under
    them: flag > ``$MOSAIC_NATS_*`` > profile > default. Raises ConfigError for a named
    profile that is missing or has a key or value it should not."""
    from msgspec.structs import replace

    env = os.environ if environ is None else environ
    cfg = load_profile(*profile_path(args, env))
    chosen: dict[str, object] = {}
    for dest, field, var in _NATS_FIELDS:
        flag = getattr(args, dest)
        if flag is not None:
            chosen[field] = flag
        elif env.get(var):  # an empty variable counts as unset
            chosen[field] = env[var]
    if args.connect_timeout is not None:
        chosen["connect_timeout_s"] = args.connect_timeout
    try:
        return replace(cfg, **chosen)
    except ValueError as exc:  # a bad server list (shared/config/nats.py says which entry)
        origin = "--nats" if args.nats is not None else "$MOSAIC_NATS_URL"
        raise ConfigError(f"{origin}: {str(exc).removeprefix('field nats_url: ')}") from None


def resolve_nats(args: argparse.Namespace) -> None:
    """Settle the NATS settings of a command that takes :func:`add_nats_args`, before it
    runs: a bad profile is a usage error, reported like one."""
    if hasattr(args, "profile"):
        args.nats_config = nats_client_config(args)


@asynccontextmanager
async def operator_bus(args: argparse.Namespace) -> AsyncIterator[Bus]:
    """Connect with the options of :func:`add_nats_args`; closed on leaving."""
    from shared.bus import Bus  # imported when used: every command parses this module

    cfg = getattr(args, "nats_config", None) or nats_client_config(args)
    profile, _ = profile_path(args, os.environ)
    also = f" or profile {profile}" if profile.is_file() else ""
    bus = await Bus.connect_with(cfg, name="mosaic-cli", where=f"NATS options (--nats-…{also}): ")
    # a refused API request is said in one line by PermissionRefused below, not twice
    logging.getLogger("shared.bus").addFilter(_not_api_refusals)
    try:
        yield bus
    except NoCoordinator as exc:  # say which URL, where it came from, and what answers there
        raise NoCoordinator(f"{exc}{await _who_answers(bus)}; {url_origin(args)}") from None
    except BusError as exc:
        from shared.asking import PermissionRefused

        if not isinstance(exc, PermissionRefused):
            raise
        # say which role may not, in one line
        raise PermissionRefused(exc.subject, exc.user, role_refusal(exc.subject)) from None
    finally:
        await bus.aclose()


def _not_api_refusals(record: logging.LogRecord) -> bool:
    text = record.getMessage().lower()
    return not (text.startswith("nats refused") and 'publish to "mosaic.api.' in text)


def role_refusal(subject: str) -> str:
    """Why NATS refuses ``mosaic.api.<verb>`` to a role user of ``nats-config``: the
    roles below the verb's least role (coordinator/auth/roles.py) may not use it."""
    from coordinator.auth.roles import VERB_ROLES
    from shared.config.auth import ROLES

    verb = subject.removeprefix("mosaic.api.")
    needed = VERB_ROLES.get(verb)
    if needed is None or verb == subject:
        return "its NATS permissions do not allow it"
    below = ROLES[: ROLES.index(needed)]
    who = " and ".join(below)
    return f"the {who} role{'s' if len(below) > 1 else ''} may not {verb}"


def url_origin(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    """Where the NATS URL in use came from, and how to choose another."""
    env = os.environ if environ is None else environ
    flag = getattr(args, "nats", None)
    if flag is not None:
        return f"the {_url_or_list(flag)} --nats's"
    if env.get("MOSAIC_NATS_URL"):
        return f"the {_url_or_list(env['MOSAIC_NATS_URL'])} $MOSAIC_NATS_URL's"
    profile, _ = profile_path(args, env)
    if profile.is_file():
        url = load_profile(profile, "--profile").nats_url
        if url != DEFAULT_NATS_URL:
            return f"the {_url_or_list(url)} nats_url of profile {profile}"
    return (
        f"{DEFAULT_NATS_URL} is the default URL: name the coordinator's NATS with --nats, "
        "$MOSAIC_NATS_URL or nats_url in an operator profile"
    )


def _url_or_list(url: str) -> str:
    """``URL is`` for one server, ``server list is`` for a cluster's members."""
    return "server list is" if "," in url else "URL is"


async def _who_answers(bus: Bus) -> str:
    """Whether the NATS that answered holds mosaic-backup's streams (ours, coordinator
    down) or not (most likely another NATS on that address)."""
    import anyio
    from nats.js.errors import NotFoundError

    from shared import subjects

    try:
        with anyio.fail_after(2.0):  # an operator account may not ask: no answer comes
            await bus.js.stream_info(subjects.JOBS_STREAM)
    except NotFoundError:
        return (
            f" (that NATS answers but holds no {subjects.JOBS_STREAM} stream: "
            "it is not mosaic-backup's bus)"
        )
    except Exception:  # no JetStream, or this account may not look: nothing more to say
        return ""
    return " (mosaic-backup's streams are there: is `mosaic-backup coordinator run` up?)"


def as_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--as",
        dest="requested_by",
        default=None,
        metavar="NAME",
        help="who asks, for the audit trail (default: user@host of this shell)",
    )


def wait_args(p: argparse.ArgumentParser, *, timeout: float = 600.0) -> None:
    p.add_argument(
        "--no-wait", action="store_true", help="return once the coordinator accepted the job"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="S",
        help=f"give up waiting when no event arrives for S seconds (default {timeout:g})",
    )


def paths_arg(p: argparse.ArgumentParser) -> None:
    """``--path``, for restores of part of a backup."""
    p.add_argument(
        "--path",
        action="append",
        default=[],
        dest="paths",
        metavar="PATH",
        help="restore only this path of the backup (repeatable; default: everything)",
    )


def daemon_args(p: argparse.ArgumentParser, what: str, config: str) -> None:
    """``<role> run --config FILE [--log-format …]``: the long-running roles."""
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_p = actions.add_parser("run", help=f"run the {what} until stopped")
    run_p.add_argument("--config", required=True, help=f"path to {config}")
    log_format_arg(run_p)


def log_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        default=os.environ.get("MOSAIC_LOG_FORMAT", "text"),
        help="text, or json: one object per line with trace_id/span_id inside a traced job "
        "(default: $MOSAIC_LOG_FORMAT or text)",
    )
