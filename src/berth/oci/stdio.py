"""The container init's stdio as its caller gave it (runc's ``descriptors.json``).

podman's conmon and containerd's shim hand ``create`` (and ``restore``) pipes as the runtime's
stdio; the container's init inherits them.  A checkpoint records what fds 0, 1 and 2 were
(``pipe:[INODE]``), and ``restore`` hands CRIU its own fds 0-2 for those keys
(``--inherit-fd``), so the restored processes write to the new caller's pipes.

They are read when the init is made (``create``: it waits for ``start``, before any of the
container's code runs; ``restore``: this command's own stdio, which the restored init got) and
kept in state.json (``berth.stdio``), as runc keeps them.  Not at checkpoint time: a shell in the
container may have its fd 1 on a file then (busybox ash keeps ``cmd > FILE``'s redirection on
itself while ``cmd`` runs, the caller's pipe moved to fd 10 and up); the pipe went unrecorded,
the restore handed CRIU no new one, CRIU made a pipe nobody reads and every writer of the
container's output died of SIGPIPE, silently.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KEY = "stdio"  # in state.json's "berth" object
# What may go to CRIU as an --inherit-fd key: the caller's pipes and sockets, by inode.
_INHERITED = ("pipe:[", "socket:[")


def descriptors(pid: int | str) -> list[str]:
    """What fds 0, 1 and 2 of ``pid`` (or ``"self"``) are: their /proc links, "" where closed."""
    out = []
    for fd in range(3):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            out.append("")
    return out


def recorded(state: dict[str, Any]) -> list[str] | None:
    """The stdio kept in a container's state (``berth.stdio``), None if it has none (made by an
    older berth) or it is not three strings."""
    berth = state.get("berth")
    value = berth.get(KEY) if isinstance(berth, dict) else None
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def record(state: dict[str, Any], pid: int | str) -> None:
    """Keep ``pid``'s fds 0-2 in ``state`` (the caller saves it)."""
    berth = state.setdefault("berth", {})
    berth[KEY] = descriptors(pid)


def inherited(descs: object) -> list[tuple[int, str]]:
    """(fd, key) for each of a checkpoint's ``descriptors`` the restoring command hands over
    as its own fd of that number: the pipes and sockets among fds 0-2 (anything else in a
    berth.json that may have been altered is ignored)."""
    if not isinstance(descs, list):
        return []
    return [(fd, d) for fd, d in enumerate(descs[:3]) if isinstance(d, str) and _is_inherited(d)]


def _is_inherited(d: str) -> bool:
    """``pipe:[INODE]`` or ``socket:[INODE]`` (INODE in ASCII digits)."""
    kind = next((k for k in _INHERITED if d.startswith(k)), None)
    inode = d[len(kind) : -1] if kind and d.endswith("]") else ""
    return inode.isascii() and inode.isdigit()
