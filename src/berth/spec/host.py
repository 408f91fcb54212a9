"""A validated config.json against this host, before anything is created: what the spec names
must exist here.

:func:`berth.spec.validate.validate` checks the shape of each field; these checks look at the
host (read-only: a stat, an ``O_PATH`` open, a file of /sys) where the kernel would otherwise
fail half-way through ``create`` with a bare errno that names no field: a root.path that does
not exist (the bind mount's ENOENT), a namespace path that is not a namespace of its type
(setns's EINVAL), a CPU or memory node the host does not have (cpuset.cpus's ERANGE).  The
first problem is one :class:`~berth.errors.UsageError` naming the JSON path.
"""

from __future__ import annotations

import errno
import os

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: An OCI namespace type -> its CLONE_NEW* flag, what ioctl(NS_GET_NSTYPE) on a namespace
#: file returns (<linux/sched.h>; berth.linux.ns has them too, but spec imports no linux).
NS_TYPES = {
    "pid": 0x20000000,
    "network": 0x40000000,
    "mount": 0x00020000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "user": 0x10000000,
    "cgroup": 0x02000000,
    "time": 0x00000080,
}
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), <linux/nsfs.h>
_NS_PROC = {"network": "net", "mount": "mnt"}  # the names under /proc/PID/ns
ONLINE_CPUS = "/sys/devices/system/cpu/online"
ONLINE_NODES = "/sys/devices/system/node/online"


def check_host(spec: dict[str, Any], bundle: str) -> None:
    """Check a validated ``spec`` (its bundle directory ``bundle``) against this host."""
    root_path(spec["root"]["path"], bundle)
    linux = spec.get("linux") or {}
    for i, ns in enumerate(linux.get("namespaces") or ()):
        if ns.get("path"):
            namespace_path(ns["type"], ns["path"], f"linux.namespaces[{i}].path")
    check_resources(linux.get("resources") or {}, "linux.resources")


def check_resources(res: dict[str, Any], field: str) -> None:
    """The parts of a validated ``linux.resources`` that depend on the host (``field`` is its
    JSON path): the CPUs and memory nodes of ``cpu.cpus`` and ``cpu.mems``."""
    cpu = res.get("cpu") or {}
    if cpu.get("cpus"):
        cpuset(cpu["cpus"], f"{field}.cpu.cpus", ONLINE_CPUS, "CPU")
    if cpu.get("mems"):
        cpuset(cpu["mems"], f"{field}.cpu.mems", ONLINE_NODES, "memory node")


def root_path(path: str, bundle: str) -> str:
    """``root.path`` (relative to the bundle) as an existing directory."""
    full = path if os.path.isabs(path) else os.path.join(bundle, path)
    try:
        st = os.stat(full)
    except OSError as e:
        why = (
            "does not exist"
            if e.errno == errno.ENOENT
            else f"cannot be reached: [Errno {e.errno}] {e.strerror}"
        )
        raise UsageError("root.path", f"{full!r} {why}") from None
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise UsageError("root.path", f"{full!r} is not a directory")
    return full


def namespace_path(kind: str, path: str, field: str) -> None:
    """``path`` is a namespace file (``/proc/PID/ns/net``, a bind mount of one) of type ``kind``:
    a regular file (as nsfs's are: no FIFO or device is opened) that answers NS_GET_NSTYPE."""
    import fcntl
    import stat

    like = f"like /proc/PID/ns/{_NS_PROC.get(kind, kind)}"
    fd = -1
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(field, f"{path!r} is not a namespace file ({like})")
        ns = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            got = fcntl.ioctl(ns, NS_GET_NSTYPE)
        except OSError:  # ENOTTY: a file of another file system
            raise UsageError(field, f"{path!r} is not a namespace file ({like})") from None
        finally:
            os.close(ns)
    except OSError as e:
        why = (
            "does not exist"
            if e.errno == errno.ENOENT
            else f"cannot be opened: [Errno {e.errno}] {e.strerror}"
        )
        raise UsageError(field, f"{path!r} {why}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if got != NS_TYPES[kind]:
        name = next((k for k, v in NS_TYPES.items() if v == got), hex(got))
        raise UsageError(field, f"{path!r} is a {name} namespace, not a {kind} one")


def _ranges(text: str) -> list[tuple[int, int]]:
    """The ranges of a list like ``0-3,8`` (one validate's cpuset check accepted, or the kernel's)."""
    out = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.append((int(lo), int(hi or lo)))
    return out


def cpuset(text: str, field: str, online_file: str, what: str) -> None:
    """Every CPU (memory node) of the list ``text`` is online here (else cpuset's ERANGE/EINVAL)."""
    try:
        with open(online_file) as f:
            online_text = f.read().strip()
    except OSError:
        return  # no such list on this kernel (no NUMA): the cgroup write says it
    online = {n for lo, hi in _ranges(online_text) for n in range(lo, hi + 1)}
    for lo, hi in _ranges(text):
        for n in range(lo, hi + 1):  # each step past an online number: len(online) + 1 at most
            if n not in online:
                raise UsageError(field, f"{what} {n} is not online on this host (online: {online_text})")
