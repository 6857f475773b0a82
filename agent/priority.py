"""The agent's CPU and I/O priority (``[priority]``: ``nice``, ``ionice_class``,
``ionice_level``), for itself and for every dump process it starts.

Linux keeps both priorities per thread, and a new thread or child process inherits them
from the thread that creates it. So :func:`apply_to_agent` sets them on every thread the
agent has at its start (``/proc/self/task``): worker threads started later and every
child they spawn (``pg_dump``, ``mariabackup``, ``redis-cli``, hooks, snapshot tools)
inherit the configured values. Dump processes started through
:class:`agent.sources.command.CommandStream` are also set explicitly right after the
spawn (:func:`adopt`), by pid, from the parent: no ``preexec_fn`` (unsafe with threads)
and no ``nice``/``ionice`` wrapper programs in front of the dump command.

``nice`` is ``setpriority(2)``; the I/O class is ``ioprio_set(2)``, which the standard
library does not wrap, called through ``syscall(2)`` with ctypes. A priority the agent
may not take (a negative nice or the realtime class without root) fails the start in one
line naming the field.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache

from shared.config.priority import PriorityConfig
from shared.errors import ConfigError

IOPRIO_CLASS = {"none": 0, "realtime": 1, "best-effort": 2, "idle": 3}
IOPRIO_CLASS_SHIFT = 13
IOPRIO_WHO_PROCESS = 1
DEFAULT_LEVEL = 4  # what the kernel and ionice use when no level is given
# ioprio_set / ioprio_get syscall numbers by machine (linux/arch/*/unistd*.h)
_SYSCALLS = {
    "x86_64": (251, 252),
    "aarch64": (30, 31),
    "riscv64": (30, 31),
    "i686": (289, 290),
    "ppc64le": (273, 274),
    "s390x": (282, 283),
}

log = logging.getLogger(__name__)
_for_children: PriorityConfig | None = None


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscalls() -> tuple[int, int]:
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        raise ConfigError(
            f"field 'priority.ionice_class': setting the I/O class is not supported on "
            f"{machine} by this agent; remove ionice_class (use `ionice` in the unit instead)"
        )
    return _SYSCALLS[machine]


def ioprio_get(tid: int) -> tuple[str, int]:
    """(class, level) of a thread or process, as ``ionice -p`` reports them."""
    value = _libc().syscall(_syscalls()[1], IOPRIO_WHO_PROCESS, tid)
    if value < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioprio_get({tid}): {os.strerror(err)}")
    cls = value >> IOPRIO_CLASS_SHIFT
    name = next(k for k, v in IOPRIO_CLASS.items() if v == cls)
    return name, value & ((1 << IOPRIO_CLASS_SHIFT) - 1)


def _ioprio_set(tid: int, cls: str, level: int) -> None:
    value = (IOPRIO_CLASS[cls] << IOPRIO_CLASS_SHIFT) | level
    if _libc().syscall(_syscalls()[0], IOPRIO_WHO_PROCESS, tid, value) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return []  # the process has ended already


def _apply_to_thread(cfg: PriorityConfig, tid: int) -> None:
    if cfg.nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, cfg.nice)
        except PermissionError:
            raise ConfigError(
                f"field 'priority.nice': {cfg.nice} is not permitted for this user (a "
                "nice below the current one needs root or CAP_SYS_NICE); use a higher value"
            ) from None
    if cfg.ionice_class is not None:
        level = 0 if cfg.ionice_class in ("idle", "none") else cfg.ionice_level
        try:
            _ioprio_set(tid, cfg.ionice_class, DEFAULT_LEVEL if level is None else level)
        except PermissionError:
            raise ConfigError(
                f"field 'priority.ionice_class': {cfg.ionice_class!r} is not permitted for "
                'this user (realtime needs root or CAP_SYS_ADMIN); use "best-effort" or "idle"'
            ) from None


def apply(cfg: PriorityConfig, pid: int) -> None:
    """Give every thread of process ``pid`` the configured priorities. A thread (or the
    process) that ends meanwhile is skipped: it has nothing left to do."""
    for tid in _threads(pid):
        try:
            _apply_to_thread(cfg, tid)
        except ProcessLookupError:
            continue


def apply_to_agent(cfg: PriorityConfig) -> None:
    """At the agent's start: its own threads now, its dump processes from now on."""
    global _for_children
    apply(cfg, os.getpid())
    _for_children = cfg


def for_children(cfg: PriorityConfig | None) -> None:
    """Set (or, with None, forget) what :func:`adopt` gives children, without touching
    this process (the tests; an agent calls :func:`apply_to_agent`)."""
    global _for_children
    _for_children = cfg


def adopt(pid: int) -> None:
    """Right after a dump process was spawned: give it the agent's priorities.

    Never raises: the child already runs at what it inherited from the agent (the same
    values, which the agent could take), and a dump must not be left running unowned
    because its priority could not be set a second time."""
    if _for_children is None:
        return
    try:
        apply(_for_children, pid)
    except ConfigError as exc:
        log.warning("dump process %d keeps the priority it inherited: %s", pid, exc)
