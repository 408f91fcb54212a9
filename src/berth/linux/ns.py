"""Namespaces: unshare(2) and setns(2)."""

from __future__ import annotations

import ctypes

from berth.linux.libc import check, flag_names, libc


class Clone:
    """CLONE_NEW* flags, as unshare(2) and setns(2) take them (plain ints: see _NAMES)."""

    NEWNS = 0x00020000
    NEWCGROUP = 0x02000000
    NEWUTS = 0x04000000
    NEWIPC = 0x08000000
    NEWUSER = 0x10000000
    NEWPID = 0x20000000
    NEWNET = 0x40000000
    NEWTIME = 0x00000080


# OCI namespace type -> (flag, /proc/PID/ns entry)
NAMESPACES: dict[str, tuple[int, str]] = {
    "user": (Clone.NEWUSER, "user"),
    "mount": (Clone.NEWNS, "mnt"),
    "pid": (Clone.NEWPID, "pid"),
    "network": (Clone.NEWNET, "net"),
    "uts": (Clone.NEWUTS, "uts"),
    "ipc": (Clone.NEWIPC, "ipc"),
    "cgroup": (Clone.NEWCGROUP, "cgroup"),
    "time": (Clone.NEWTIME, "time"),
}

# Plain int constants, not enum.IntFlag: importing enum costs milliseconds on the start path.
_NAMES = {v: f"CLONE_{k}" for k, v in vars(Clone).items() if k.isupper()}

libc.unshare.argtypes = [ctypes.c_int]
libc.unshare.restype = ctypes.c_int
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
libc.setns.restype = ctypes.c_int


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (call it in a forked child only)."""
    check(libc.unshare(int(flags)), f"unshare({flag_names(int(flags), _NAMES)})")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that ``fd`` refers to (call it in a forked child only)."""
    check(libc.setns(fd, int(nstype)), f"setns({fd}, {flag_names(int(nstype), _NAMES)})")
