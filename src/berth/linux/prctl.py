"""prctl(2) operations the runtime needs."""

from __future__ import annotations

import ctypes

from berth.linux.libc import check, libc

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0, *, name: str = "") -> int:
    """prctl(2); ``name`` labels the operation in the error message."""
    return check(libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({name or option}, {arg2})")


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: execve can never grant privileges again."""
    prctl(PR_SET_NO_NEW_PRIVS, 1, name="PR_SET_NO_NEW_PRIVS")


def set_pdeathsig(sig: int) -> None:
    """Deliver ``sig`` to this process when its parent dies."""
    prctl(PR_SET_PDEATHSIG, sig, name="PR_SET_PDEATHSIG")


def set_child_subreaper(on: bool = True) -> None:
    """Orphaned descendants are reparented to this process instead of init."""
    prctl(PR_SET_CHILD_SUBREAPER, int(on), name="PR_SET_CHILD_SUBREAPER")


def get_child_subreaper() -> bool:
    """Is this process a child subreaper?"""
    flag = ctypes.c_int(0)
    prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag), name="PR_GET_CHILD_SUBREAPER")
    return bool(flag.value)


def set_dumpable(on: bool) -> None:
    """A non-dumpable process's /proc entries (exe, fds, mem) are closed to others."""
    prctl(PR_SET_DUMPABLE, int(on), name="PR_SET_DUMPABLE")


def set_keepcaps(on: bool) -> None:
    """Keep permitted capabilities across a change of uid away from 0."""
    prctl(PR_SET_KEEPCAPS, int(on), name="PR_SET_KEEPCAPS")


def capbset_drop(cap: int) -> None:
    """Remove ``cap`` from the bounding set."""
    prctl(PR_CAPBSET_DROP, cap, name="PR_CAPBSET_DROP")


def capbset_read(cap: int) -> bool:
    """Is ``cap`` in the bounding set?"""
    return prctl(PR_CAPBSET_READ, cap, name="PR_CAPBSET_READ") == 1


def ambient_raise(cap: int) -> None:
    """Add ``cap`` to the ambient set (it must be permitted and inheritable)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, name="PR_CAP_AMBIENT_RAISE")


def ambient_clear() -> None:
    """Empty the ambient set."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, name="PR_CAP_AMBIENT_CLEAR_ALL")


def set_name(name: str) -> None:
    """The thread's comm name (as ps shows it)."""
    libc.prctl(
        PR_SET_NAME, ctypes.cast(ctypes.c_char_p(name.encode()[:15]), ctypes.c_void_p).value or 0, 0, 0, 0
    )
