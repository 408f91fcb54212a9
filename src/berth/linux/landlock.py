"""Landlock (landlock(7)): scoping a process tree away from IPC endpoints made outside it.

berth uses Landlock only for its *scopes* (ABI 6, Linux 6.12): a ruleset that handles no
file-system or network access (``handled_access_fs = handled_access_net = 0``) and sets
``scoped``.  Once a process calls ``landlock_restrict_self`` with it, that process and every
process it forks afterwards are in a new Landlock *domain*, and

* :data:`SCOPE_ABSTRACT_UNIX_SOCKET`: they can connect (or send a datagram) only to abstract
  unix sockets made by a process of the same domain or of a domain nested in it.  Abstract
  socket names are per network namespace: a guest on the host's network stack would otherwise
  reach every host daemon listening on one (``@/tmp/.X11-unix/X0``, a D-Bus bus, ...).
* :data:`SCOPE_SIGNAL`: likewise for signals (only where the guest shares the host's pid
  namespace does that matter).

Every call makes a new domain nested in the caller's: two processes that restricted
themselves separately are in sibling domains and see each other as "outside".  A domain cannot
be joined or left; it is inherited over fork and execve only.

The three syscalls have no glibc wrapper; their numbers are the same on every architecture
(444-446: they came after the syscall tables were unified in Linux 5.1), so no per-arch table.
"""

from __future__ import annotations

import ctypes
import os
import struct

from berth.linux.libc import check, libc

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446

CREATE_RULESET_VERSION = 1 << 0

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1
SCOPE_NAMES = {SCOPE_ABSTRACT_UNIX_SOCKET: "abstract-unix", SCOPE_SIGNAL: "signal"}

# The first ABI that knows each scope (Documentation/userspace-api/landlock.rst).
SCOPES_ABI = 6

# struct landlock_ruleset_attr { __u64 handled_access_fs; __u64 handled_access_net; __u64 scoped; }
_ATTR = struct.Struct("=QQQ")

libc.syscall.restype = ctypes.c_long


def _syscall(nr: int, *args: int | ctypes.Array[ctypes.c_char] | None) -> int:
    """syscall(2) with every integer passed as a full long (a variadic call: no narrower type
    may leave the register's upper half undefined); buffers and None (NULL) as pointers."""
    return int(
        libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    )


def ruleset_attr(scoped: int) -> bytes:
    """The ``struct landlock_ruleset_attr`` of a scope-only ruleset: no file-system or network
    access handled (nothing of those is restricted), ``scoped`` set."""
    if scoped & ~(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL):
        raise ValueError(f"unknown Landlock scope bits {scoped:#x}")
    return _ATTR.pack(0, 0, scoped)


def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 where it has none (not built in, or not in the
    ``lsm=`` list: ENOSYS, EOPNOTSUPP)."""
    ret = _syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    return max(int(ret), 0)


def restrict_scopes(scoped: int) -> None:
    """Put the calling thread (and what it forks from now on) in a new Landlock domain with the
    ``scoped`` restrictions and nothing else.  It needs no_new_privs or CAP_SYS_ADMIN in the
    caller's user namespace.  Call it single-threaded: other threads keep their domain."""
    attr = ctypes.create_string_buffer(ruleset_attr(scoped), _ATTR.size)
    op = f"landlock_create_ruleset(scoped={names(scoped)})"
    fd = check(_syscall(SYS_LANDLOCK_CREATE_RULESET, attr, _ATTR.size, 0), op)
    try:
        check(_syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0), "landlock_restrict_self")
    finally:
        os.close(fd)


def names(scoped: int) -> str:
    """``abstract-unix,signal`` for a scope mask (for messages)."""
    return ",".join(name for bit, name in SCOPE_NAMES.items() if scoped & bit) or "none"
