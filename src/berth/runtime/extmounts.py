"""The container's mounts CRIU must be told are external, and where they come from on the host.

CRIU dumps a bind mount only when a mount of its filesystem's root is in the same dump (it
re-creates the bind from there); otherwise it stops with "doesn't have a proper root mount".
A guest holds such binds: berth's tini (the host's file, :data:`berth.runtime.process.INIT_AT`),
in a user namespace its device nodes (binds of the host's devtmpfs nodes) and the masked /proc
files bound from its /dev/null, lxcfs's files over /proc and /sys.  Each is dumped as
``--external mnt[MOUNTPOINT]:KEY`` and bound again on restore from the same host path
(``--external mnt[KEY]:PATH``), as runc does for a container's bind mounts.

The choice is a pure function of two mountinfo texts (the container's and ours), tested on
captured files; :func:`of_pid` reads them.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KEY = "berth-ext-"
# Filesystems CRIU dumps from their own description (a subtree of proc or a cgroup hierarchy).
OWN_TYPES = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "mqueue", "devpts"})


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field) if "\\" in field else field


def parse(text: str) -> list[dict[str, str]]:
    """mountinfo lines as [{"dev" ("major:minor"), "root", "mnt", "type"}]."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields:
            continue
        sep = fields.index("-")
        out.append(
            {
                "dev": fields[2],
                "root": _unescape(fields[3]),
                "mnt": _unescape(fields[4]),
                "type": fields[sep + 1],
            }
        )
    return out


def _under(path: str, top: str) -> str | None:
    """``path`` relative to ``top`` ("" for itself), or None when it is not below it."""
    if top == "/":
        return path.lstrip("/")
    if path == top:
        return ""
    if path.startswith(top.rstrip("/") + "/"):
        return path[len(top.rstrip("/")) + 1 :]
    return None


def external(
    guest: list[dict[str, str]], host: list[dict[str, str]], *, cgroups: bool = False, sysfs: bool = False
) -> list[dict[str, Any]]:
    """The guest's bind mounts whose filesystem has no mount of its root in the guest:
    [{"mnt" (inside), "host" (the path of the same file or directory in ``host``'s
    namespace, or None when no mount there holds it)}], in mountinfo order.  ``cgroups``: its
    cgroup hierarchies too (marked "cgroup": a guest in a user namespace, where CRIU, in no
    cgroup namespace of the guest's, may not mount them).  ``sysfs``: its sysfs mounts too
    (marked "sysfs": a guest in a user namespace sharing the host's network namespace has the
    host's sysfs bound in; a new one may only be mounted by the owner of the network namespace)."""
    whole = {m["dev"] for m in guest if m["root"] == "/"}
    out: list[dict[str, Any]] = []
    for m in guest:
        is_sysfs = sysfs and m["type"] == "sysfs"
        if m["mnt"] == "/" or (not is_sysfs and (m["root"] == "/" or m["dev"] in whole)):
            continue
        is_cgroup = m["type"] in ("cgroup", "cgroup2")
        if m["type"] in OWN_TYPES and not (cgroups and is_cgroup) and not is_sysfs:
            continue
        if is_sysfs:
            # CRIU in the guest's user namespace may neither mount a sysfs of a network
            # namespace it does not own nor clone the host's /sys (whose child mounts it cannot
            # see): restore mounts a new one (:func:`berth.runtime.checkpoint.restore`).
            out.append({"mnt": m["mnt"], "host": "/sys", "sysfs": True})
            continue
        path = None
        best = -1
        for h in host:
            if h["dev"] != m["dev"]:
                continue
            rel = _under(m["root"], h["root"])
            if rel is None or len(h["root"]) <= best:
                continue
            best = len(h["root"])
            path = h["mnt"].rstrip("/") + "/" + rel if rel else h["mnt"]
        out.append({"mnt": m["mnt"], "host": path, **({"cgroup": True} if is_cgroup else {})})
    return out


def moved_cgroup(host: str, old: str, new: str) -> str:
    """The host path of a guest's cgroup bind (``host``, for its cgroup ``old``) once the guest
    is in cgroup ``new`` (a restore under another parent, on another host)."""
    old, new = old.strip("/"), new.strip("/")
    if old and old != new and host.endswith("/" + old):
        return host[: len(host) - len(old)] + new
    return host


def of_pid(pid: int, *, cgroups: bool = False, sysfs: bool = False) -> list[dict[str, Any]]:
    """:func:`external` for the container whose init is ``pid``, seen from our namespace."""
    with open(f"/proc/{pid}/mountinfo") as f:
        guest = parse(f.read())
    with open("/proc/self/mountinfo") as f:
        host = parse(f.read())
    return external(guest, host, cgroups=cgroups, sysfs=sysfs)


def mount_flags(options: str) -> int:
    """The per-mount flags (mountinfo's 6th field, "rw,nosuid,relatime") as mount(2) flags,
    read-only left out; no atime option there means strictatime.  A mount CRIU binds into a
    guest's user namespace must have them already: that namespace may not change them (locked)."""
    from berth.linux.mount import MS, OPTION_FLAGS

    flags = 0
    opts = [o for o in options.split(",") if o]
    for o in opts:
        if o in OPTION_FLAGS and o not in ("ro", "rw"):
            on, bit = OPTION_FLAGS[o]
            flags = flags | bit if on else flags & ~bit
    if opts and not {"relatime", "noatime", "strictatime"} & set(opts):
        flags |= MS.STRICTATIME
    return int(flags)
