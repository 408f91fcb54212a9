"""fallocate(2) with ``FALLOC_FL_COLLAPSE_RANGE``: drop a block-aligned range of a regular file
and shift what follows down, in place (ext4, xfs, f2fs; not tmpfs nor btrfs: ``EOPNOTSUPP``).

The inode is locked for the call: a writer with ``O_APPEND`` writes after the shortened file's
end before or after it, never into the shifted range.  The range must be whole filesystem
blocks (``EINVAL`` otherwise) and end before the end of the file."""

from __future__ import annotations

import ctypes

from berth.linux.libc import check, libc

FALLOC_FL_COLLAPSE_RANGE = 0x08

_fallocate = libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def collapse_range(fd: int, offset: int, length: int) -> None:
    """Remove ``length`` bytes at ``offset`` from the file open at ``fd`` (for writing)."""
    check(
        _fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, offset, length),
        f"fallocate({fd}, FALLOC_FL_COLLAPSE_RANGE, {offset}, {length})",
    )
