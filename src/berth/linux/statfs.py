"""Room on a filesystem: free bytes and free inodes, above a reserve a writer of untrusted data
(a migration stream, an image's layers) may not take, so it cannot fill the store."""

from __future__ import annotations

import os

RESERVE = 256 << 20  # bytes a writer may not take (or 5% of a smaller filesystem)
INODE_RESERVE = 4096  # inodes a writer may not take (or 5% of a smaller inode table)


def no_room(fd: int, size: int, inodes: int = 0) -> str | None:
    """Why ``size`` more bytes and ``inodes`` more inodes would not fit on the filesystem of the
    descriptor ``fd`` (an ``O_PATH`` one will do) above the reserve; None if they fit.  A
    filesystem that counts no inodes (btrfs: ``f_files`` 0) is not checked for them."""
    st = os.fstatvfs(fd)
    free = st.f_bavail * st.f_frsize
    reserve = min(RESERVE, st.f_blocks * st.f_frsize // 20)
    if size > free - reserve:
        return f"no room for {size} bytes here ({max(free - reserve, 0)} free above the reserve)"
    if inodes and st.f_files:
        ifree = st.f_favail - min(INODE_RESERVE, st.f_files // 20)
        if inodes > ifree:
            return f"no free inode here ({max(ifree, 0)} free above the reserve)"
    return None
