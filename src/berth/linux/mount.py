"""mount(2), umount2(2), pivot_root(2) and a parser for mount option strings."""

from __future__ import annotations

import ctypes

from berth.linux.libc import check, flag_names, fs, libc


class MS:
    """mount(2) flags."""

    RDONLY = 1
    NOSUID = 2
    NODEV = 4
    NOEXEC = 8
    SYNCHRONOUS = 16
    REMOUNT = 32
    MANDLOCK = 64
    DIRSYNC = 128
    NOSYMFOLLOW = 256
    NOATIME = 1024
    NODIRATIME = 2048
    BIND = 4096
    MOVE = 8192
    REC = 16384
    SILENT = 32768
    UNBINDABLE = 1 << 17
    PRIVATE = 1 << 18
    SLAVE = 1 << 19
    SHARED = 1 << 20
    RELATIME = 1 << 21
    STRICTATIME = 1 << 24
    LAZYTIME = 1 << 25


MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
PROPAGATION = MS.SHARED | MS.SLAVE | MS.PRIVATE | MS.UNBINDABLE

# Plain int constants, not enum.IntFlag: importing enum costs milliseconds on the start path.
_NAMES = {v: f"MS_{k}" for k, v in vars(MS).items() if k.isupper()}

libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.mount.restype = ctypes.c_int
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.umount2.restype = ctypes.c_int
libc.syscall.restype = ctypes.c_long

# Mount option words (as in fstab and the OCI spec) -> (set?, flag).
OPTION_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (True, MS.RDONLY),
    "rw": (False, MS.RDONLY),
    "nosuid": (True, MS.NOSUID),
    "suid": (False, MS.NOSUID),
    "nodev": (True, MS.NODEV),
    "dev": (False, MS.NODEV),
    "noexec": (True, MS.NOEXEC),
    "exec": (False, MS.NOEXEC),
    "sync": (True, MS.SYNCHRONOUS),
    "async": (False, MS.SYNCHRONOUS),
    "dirsync": (True, MS.DIRSYNC),
    "remount": (True, MS.REMOUNT),
    "mand": (True, MS.MANDLOCK),
    "nomand": (False, MS.MANDLOCK),
    "atime": (False, MS.NOATIME),
    "noatime": (True, MS.NOATIME),
    "diratime": (False, MS.NODIRATIME),
    "nodiratime": (True, MS.NODIRATIME),
    "bind": (True, MS.BIND),
    "rbind": (True, MS.BIND | MS.REC),
    "relatime": (True, MS.RELATIME),
    "norelatime": (False, MS.RELATIME),
    "strictatime": (True, MS.STRICTATIME),
    "nostrictatime": (False, MS.STRICTATIME),
    "nosymfollow": (True, MS.NOSYMFOLLOW),
    "symfollow": (False, MS.NOSYMFOLLOW),
    "lazytime": (True, MS.LAZYTIME),
    "nolazytime": (False, MS.LAZYTIME),
}
PROPAGATION_OPTIONS: dict[str, int] = {
    "private": MS.PRIVATE,
    "rprivate": MS.PRIVATE | MS.REC,
    "shared": MS.SHARED,
    "rshared": MS.SHARED | MS.REC,
    "slave": MS.SLAVE,
    "rslave": MS.SLAVE | MS.REC,
    "unbindable": MS.UNBINDABLE,
    "runbindable": MS.UNBINDABLE | MS.REC,
}


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """Split OCI mount options into (flags, propagation flags, data string)."""
    flags = 0
    prop = 0
    data: list[str] = []
    for opt in options:
        if opt in OPTION_FLAGS:
            on, bit = OPTION_FLAGS[opt]
            flags = flags | bit if on else flags & ~bit
        elif opt in PROPAGATION_OPTIONS:
            prop |= PROPAGATION_OPTIONS[opt]
        elif opt in ("tmpcopyup", "idmap", "ridmap", "defaults"):
            continue
        else:
            data.append(opt)
    return flags, prop, ",".join(data)


def mount(
    source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None
) -> None:
    """mount(2)."""
    ret = libc.mount(
        fs(source) if source is not None else None,
        fs(target),
        fs(fstype) if fstype is not None else None,
        int(flags),
        fs(data) if data else None,
    )
    if ret == -1:
        check(ret, f"mount({source!r}, {target!r}, {fstype!r}, {flag_names(int(flags), _NAMES)})")


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    check(libc.umount2(fs(target), flags), f"umount2({target!r}, {flags})")


# glibc has no pivot_root wrapper and Python has no binding: the syscall number, per arch.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2)."""
    import os

    nr = _SYS_PIVOT_ROOT[os.uname().machine]
    check(libc.syscall(nr, fs(new_root), fs(put_old)), f"pivot_root({new_root!r}, {put_old!r})")
