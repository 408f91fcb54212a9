"""Look up users and groups in a guest's own /etc/passwd and /etc/group (never the host's)."""

from __future__ import annotations

import os
import stat

from berth.errors import UsageError
from berth.linux.path import secure_join

_MAX_SIZE = 16 << 20
_ID_MAX = 2**32 - 2  # (uid_t)-1 is no id
NGROUPS_MAX = 65536  # the kernel's limit on supplementary groups (setgroups)


def _id(text: str) -> bool:
    """Is ``text`` an id: ASCII digits (``isdigit`` alone takes "²", which ``int`` refuses) of a
    uid_t other than -1?"""
    return text.isascii() and text.isdigit() and int(text) <= _ID_MAX


def _read(rootfs: str, rel: str) -> list[list[str]]:
    path = secure_join(rootfs, rel)
    try:
        # O_NONBLOCK and a regular file only: a FIFO or /dev/zero in the user's rootfs must not hang berth.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        text = f.read(_MAX_SIZE).decode(errors="replace")
    return [line.split(":") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def resolve(rootfs: str, spec: str, field: str = "user") -> tuple[int, int, list[int], str]:
    """``name``, ``uid``, ``name:group`` or ``uid:gid`` -> (uid, gid, supplementary gids, home)."""
    user, _, group = spec.partition(":")
    if not user:
        raise UsageError(field, f"{spec!r}: empty user")
    # A line whose ids are not numbers is skipped, as libc's files backend does.
    passwd = [e for e in _read(rootfs, "/etc/passwd") if len(e) >= 6 and _id(e[2]) and _id(e[3])]
    entry = None
    if user.isascii() and user.isdigit():
        uid = int(user)
        entry = next((e for e in passwd if len(e) >= 6 and e[2] == user), None)
    else:
        entry = next((e for e in passwd if len(e) >= 6 and e[0] == user), None)
        if entry is None:
            raise UsageError(field, f"no user {user!r} in the guest's /etc/passwd")
        uid = int(entry[2])
    gid = int(entry[3]) if entry else uid if not group else 0
    groups_file = [e for e in _read(rootfs, "/etc/group") if len(e) >= 3 and _id(e[2])]
    if group:
        if group.isascii() and group.isdigit():
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
    if len(extra) > NGROUPS_MAX:
        raise UsageError(field, f"{spec!r}: in {len(extra)} groups, more than the kernel's {NGROUPS_MAX}")
    home = entry[5] if entry and entry[5] else "/"
    return uid, gid, extra, home
