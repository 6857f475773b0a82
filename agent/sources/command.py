"""A stream read from a command's standard output (``redis-cli --rdb -``,
``pg_basebackup -D -``, ``mariabackup --stream``…).

The command's stderr is kept (its tail goes into the error when it fails); a missing
program is reported with the Debian package that provides it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import IO

from agent import priority
from shared.errors import SourceError

PACKAGES = {
    "redis-cli": "redis-tools",
    "pg_basebackup": "postgresql-client",
    "pg_dump": "postgresql-client",
    "pg_receivewal": "postgresql-client",
    "mariabackup": "mariadb-backup",
    "mariadb-dump": "mariadb-client",
    "mbstream": "mariadb-backup",
}
STDERR_TAIL = 2000


def require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        package = PACKAGES.get(program)
        hint = f"install the Debian package '{package}'" if package else "install it"
        raise SourceError(f"{program} is not on PATH: {hint}")
    return path


class CommandStream:
    """Runs ``argv``; ``reader`` is its stdout. ``what`` names it in errors (no secrets)."""

    def __init__(self, argv: Sequence[str], what: str) -> None:
        self.what = what
        self._stderr = tempfile.TemporaryFile()
        exe = require(argv[0])
        self._proc = subprocess.Popen(
            [exe, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        priority.adopt(self._proc.pid)  # the agent's [priority], by pid (no preexec_fn)
        assert self._proc.stdout is not None
        self.reader: IO[bytes] = self._proc.stdout

    def _tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text[-STDERR_TAIL:].replace("\n", " | ")

    def finish(self) -> None:
        rest = self.reader.read(1)
        code = self._proc.wait()
        self.reader.close()
        tail = self._tail()
        self._stderr.close()
        if code != 0:
            raise SourceError(f"{self.what} failed (exit {code}): {tail or 'no error output'}")
        if rest:
            raise SourceError(f"{self.what}: output was not read to the end")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self.reader.close()
        self._stderr.close()
