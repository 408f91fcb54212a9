"""The process's working directory (``process.cwd``), entered inside the guest and only there.

Runs in the container's init after pivot_root, or in an exec'd process after it joined the
container's mount namespace: ``/`` is the guest's root.  The process still holds fds of the
runtime then (the host's /proc among them, :func:`berth.runtime.executable.hold_host_proc`),
so the path, which the guest or its image chooses, is never resolved as a plain path: through
``/proc/self/fd/N`` it would lead to them (the CVE-2024-21626 class).  It is resolved from the
guest's root with openat2 (:mod:`berth.linux.resolve`: no magic links, ``..`` and absolute
symlinks kept inside the root), entered by fd, and the result checked with getcwd.
"""

from __future__ import annotations

import errno
import os

from berth.errors import CannotExecute
from berth.linux.resolve import open_dir_in_root


def _reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "it leads through a /proc magic link or too many symlinks"
    return e.strerror or str(e)


def open_cwd(cwd: str, *, create: bool = False, where: str = "guest") -> int:
    """An O_PATH fd of ``cwd`` resolved inside our root (``/``); ``create``: as runc and docker,
    the directories missing are made (0755, less the umask) and the fd is of the last.  Raises
    :class:`CannotExecute` naming ``process.cwd``."""
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_dir_in_root(root, cwd, create_mode=0o755 if create else None)
    except OSError as e:
        verb = "create" if create and e.errno not in (errno.ELOOP, errno.EACCES) else "enter"
        raise CannotExecute(f"process.cwd: cannot {verb} {cwd!r} in the {where}: {_reason(e)}") from None
    finally:
        os.close(root)


def enter(cwd: str, *, create: bool = False, where: str = "guest") -> None:
    """Make ``cwd`` (resolved by :func:`open_cwd`) our working directory and check that it lies
    inside our root; raises :class:`CannotExecute` naming ``process.cwd``."""
    fd = open_cwd(cwd, create=create, where=where)
    try:
        os.fchdir(fd)
    except OSError as e:
        raise CannotExecute(f"process.cwd: cannot enter {cwd!r} in the {where}: {_reason(e)}") from None
    finally:
        os.close(fd)
    check_inside(cwd, where)


def check_inside(cwd: str, where: str = "guest") -> None:
    """Refuse a working directory outside our root: getcwd(3) then fails (ENOENT) or, from
    the kernel alone, starts with "(unreachable)"."""
    try:
        here = os.getcwd()
    except OSError:
        here = ""
    if not here.startswith("/"):
        raise CannotExecute(f"process.cwd: {cwd!r} leads outside the {where}")
