"""Which cgroup hierarchies this host mounts, and where: v1, v2 or hybrid.

Read from ``/proc/self/mountinfo`` once per root and cached; the parser is a pure function.
"""

from __future__ import annotations

from berth.errors import CgroupError, UsageError

# The v1 controllers the kernel knows (a named hierarchy such as name=systemd is keyed by its name).
V1_CONTROLLERS = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "net_prio",
        "blkio",
        "perf_event",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    }
)

# The v1 hierarchy that covers each v2 controller (for hybrid hosts: a v2 controller is used only
# when its v1 counterpart is not mounted).
V2_TO_V1 = {
    "cpu": "cpu",
    "cpuset": "cpuset",
    "memory": "memory",
    "io": "blkio",
    "pids": "pids",
    "hugetlb": "hugetlb",
    "rdma": "rdma",
    "misc": "misc",
}


class Layout:
    """The cgroup hierarchies of a host.

    ``mode`` is ``"v1"``, ``"v2"`` or ``"hybrid"``; ``v1`` maps each v1 controller (and named
    hierarchy, e.g. ``"systemd"``) to its mountpoint; ``unified`` is the cgroup2 mountpoint or None.
    """

    __slots__ = ("_controllers", "mode", "root", "unified", "v1")

    def __init__(
        self, mode: str, v1: dict[str, str], unified: str | None, root: str = "/sys/fs/cgroup"
    ) -> None:
        self.mode = mode
        self.v1 = v1
        self.unified = unified
        self.root = root
        self._controllers: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"Layout(mode={self.mode!r}, v1={self.v1!r}, unified={self.unified!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return (self.mode, self.v1, self.unified) == (other.mode, other.v1, other.unified)

    __hash__ = None  # type: ignore[assignment]

    def unified_controllers(self) -> frozenset[str]:
        """The controllers the cgroup2 hierarchy offers (its root ``cgroup.controllers``), cached."""
        if self._controllers is None:
            if self.unified is None:
                self._controllers = frozenset()
            else:
                try:
                    with open(f"{self.unified}/cgroup.controllers") as f:
                        self._controllers = frozenset(f.read().split())
                except OSError:
                    self._controllers = frozenset()
        return self._controllers

    def v2_scope(self) -> frozenset[str]:
        """The v2 controllers berth drives through the cgroup2 hierarchy on this host.

        On v2 that is every available one; on hybrid only those whose v1 counterpart is not mounted.
        """
        avail = self.unified_controllers()
        if self.mode == "v2":
            return avail
        return frozenset(c for c in avail if V2_TO_V1.get(c, c) not in self.v1)

    def mountpoints(self) -> list[str]:
        """Every hierarchy root a cgroup lives in (v1 mountpoints once each, then the cgroup2 one)."""
        seen: list[str] = []
        for mnt in self.v1.values():
            if mnt not in seen:
                seen.append(mnt)
        if self.unified is not None:
            seen.append(self.unified)
        return seen


def _unescape(s: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space); no ``re`` on the hot path."""
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1 : i + 4].isdigit() and len(s[i + 1 : i + 4]) == 3:
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str, root: str = "/sys/fs/cgroup") -> Layout:
    """The cgroup :class:`Layout` described by the text of ``/proc/self/mountinfo``.

    Only mounts at or below ``root`` count; the first mount of each controller wins.
    """
    root = root.rstrip("/") or "/"
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if len(fields) < sep + 4 or len(fields) < 5:
            continue
        mountpoint = _unescape(fields[4])
        fstype, options = fields[sep + 1], fields[sep + 3]
        if mountpoint != root and not mountpoint.startswith(root + "/"):
            continue
        if fstype == "cgroup2":
            if unified is None:
                unified = mountpoint
        elif fstype == "cgroup":
            for opt in options.split(","):
                key = opt[5:] if opt.startswith("name=") else opt if opt in V1_CONTROLLERS else None
                if key and key not in v1:
                    v1[key] = mountpoint
    if unified == root:
        mode = "v2"
        v1 = {}
    elif v1:
        mode = "hybrid" if unified else "v1"
    elif unified:
        mode = "v2"
    else:
        raise CgroupError(f"no cgroup hierarchy is mounted under {root}")
    return Layout(mode, v1, unified, root)


_CACHE: dict[str, Layout] = {}


def detect(root: str = "/sys/fs/cgroup") -> Layout:
    """This host's cgroup :class:`Layout` (``/proc/self/mountinfo`` is read once per ``root``)."""
    layout = _CACHE.get(root)
    if layout is None:
        with open("/proc/self/mountinfo") as f:
            layout = parse_mountinfo(f.read(), root)
        _CACHE[root] = layout
    return layout


def clean_path(path: str, field: str = "cgroupsPath") -> str:
    """An OCI ``cgroupsPath`` as a path relative to each hierarchy root (``"berth/web1"``).

    A leading ``/`` is allowed and dropped; empty paths and ``.``/``..`` components are refused.
    """
    if not isinstance(path, str):
        raise UsageError(field, f"must be a string, not {type(path).__name__}")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise UsageError(field, f"empty cgroup path {path!r}")
    for p in parts:
        if p in (".", ".."):
            raise UsageError(field, f"{path!r} has a {p!r} component")
        if "\0" in p or "\n" in p:
            raise UsageError(field, f"{path!r} has a NUL or newline")
    return "/".join(parts)
