"""Look up users and groups in a guest's own /etc/passwd and /etc/group (never the host's)."""

from __future__ import annotations

import os

from berth.errors import UsageError
from berth.linux.path import secure_join


def _read(rootfs: str, rel: str) -> list[list[str]]:
    path = secure_join(rootfs, rel)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    with os.fdopen(fd, errors="replace") as f:
        return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]


def resolve(rootfs: str, spec: str, field: str = "user") -> tuple[int, int, list[int], str]:
    """``name``, ``uid``, ``name:group`` or ``uid:gid`` -> (uid, gid, supplementary gids, home)."""
    user, _, group = spec.partition(":")
    if not user:
        raise UsageError(field, f"{spec!r}: empty user")
    passwd = _read(rootfs, "/etc/passwd")
    entry = None
    if user.isdigit():
        uid = int(user)
        entry = next((e for e in passwd if len(e) >= 6 and e[2] == user), None)
    else:
        entry = next((e for e in passwd if len(e) >= 6 and e[0] == user), None)
        if entry is None:
            raise UsageError(field, f"no user {user!r} in the guest's /etc/passwd")
        uid = int(entry[2])
    gid = int(entry[3]) if entry else uid if not group else 0
    groups_file = _read(rootfs, "/etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((e for e in groups_file if len(e) >= 3 and e[0] == group), None)
            if g is None:
                raise UsageError(field, f"no group {group!r} in the guest's /etc/group")
            gid = int(g[2])
    if uid >= 2**32 - 1 or gid >= 2**32 - 1:
        raise UsageError(field, f"{spec!r}: id out of range")
    name = entry[0] if entry else None
    extra = sorted(
        {
            int(e[2])
            for e in groups_file
            if name and len(e) >= 4 and name in e[3].split(",") and int(e[2]) != gid
        }
    )
    home = entry[5] if entry and entry[5] else "/"
    return uid, gid, extra, home
