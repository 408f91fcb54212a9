"""Capabilities: names, the five sets, capget/capset (linux/capability.h, version 3)."""

from __future__ import annotations

import ctypes

from berth.linux import prctl
from berth.linux.libc import check, libc

CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
CAP_NUMBERS = {name: i for i, name in enumerate(CAP_NAMES)}

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


libc.capget.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data * 2)]
libc.capget.restype = ctypes.c_int
libc.capset.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data * 2)]
libc.capset.restype = ctypes.c_int


_last_cap: list[int] = []


def last_cap() -> int:
    """The highest capability number the running kernel knows.  Read once and kept: a process
    that enters a guest reads it before (in the guest's mount namespace /proc is the guest's,
    and a fake 0 there would leave every capability in the bounding set)."""
    if not _last_cap:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _last_cap.append(int(f.read()))
        except (OSError, ValueError):
            _last_cap.append(len(CAP_NAMES) - 1)
    return _last_cap[0]


def normalize(name: str) -> str:
    """``net_admin``/``NET_ADMIN``/``CAP_NET_ADMIN`` -> ``CAP_NET_ADMIN``; ALL stays ``ALL``."""
    up = name.strip().upper()
    if up == "ALL":
        return up
    return up if up.startswith("CAP_") else f"CAP_{up}"


def to_mask(names: list[str] | set[str] | tuple[str, ...]) -> int:
    """A bit mask from capability names (unknown names raise KeyError)."""
    mask = 0
    for name in names:
        mask |= 1 << CAP_NUMBERS[name]
    return mask


def from_mask(mask: int) -> list[str]:
    """Capability names from a bit mask."""
    return [name for i, name in enumerate(CAP_NAMES) if mask >> i & 1]


def capget(pid: int = 0) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of ``pid`` (0: this thread)."""
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_Data * 2)()
    check(libc.capget(ctypes.byref(hdr), ctypes.byref(data)), f"capget({pid})")
    join = lambda a, b: a | b << 32  # noqa: E731
    return (
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's effective, permitted and inheritable sets."""
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    m = 0xFFFFFFFF
    data[0].effective, data[1].effective = effective & m, effective >> 32
    data[0].permitted, data[1].permitted = permitted & m, permitted >> 32
    data[0].inheritable, data[1].inheritable = inheritable & m, inheritable >> 32
    check(libc.capset(ctypes.byref(hdr), ctypes.byref(data)), "capset")


def drop_bounding(keep: int) -> None:
    """Drop from the bounding set every capability not in ``keep`` (needs CAP_SETPCAP)."""
    for cap in range(last_cap() + 1):
        if not keep >> cap & 1:
            prctl.capbset_drop(cap)


def apply_sets(*, effective: int, permitted: int, inheritable: int, ambient: int) -> None:
    """Set the effective, permitted, inheritable and ambient sets of this thread.

    The order the kernel allows: :func:`drop_bounding` first (it needs CAP_SETPCAP), then
    the uid change (with PR_SET_KEEPCAPS), then this.
    """
    capset(effective, permitted, inheritable)
    prctl.ambient_clear()
    for cap in range(last_cap() + 1):
        if ambient >> cap & 1:
            prctl.ambient_raise(cap)
