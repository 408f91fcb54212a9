"""Sparse files: where a file's data is (``lseek`` with ``SEEK_DATA``/``SEEK_HOLE``), so a copy
or a transfer moves only that and leaves the holes as holes (a 1 GiB hole in a guest's file is
neither read, sent nor written as 1 GiB of zeros)."""

from __future__ import annotations

import errno
import os

#: The most data extents :func:`data_extents` lists (a file with more is handled whole).
MAX_EXTENTS = 4096


def data_extents(fd: int, size: int, limit: int = MAX_EXTENTS) -> list[list[int]] | None:
    """The ``[offset, length]`` stretches of the file ``fd`` (its first ``size`` bytes) that hold
    data, in order; None if the filesystem cannot tell, or there are more than ``limit``."""
    out: list[list[int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after pos: a hole to the end
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append([start, end - start])
            if len(out) > limit:
                return None
            pos = end
    except OSError:
        return None
    return out


def is_sparse(st: os.stat_result) -> bool:
    """Fewer blocks than its size: the file may have holes (worth :func:`data_extents`)."""
    return st.st_blocks * 512 < st.st_size


def copy(fi: int, fo: int, st: os.stat_result) -> None:
    """Copy the regular file open at ``fi`` (``st``: its fstat) into the empty file ``fo``: its
    data extents only when it is sparse (``fo`` gets the same size and the same holes), else
    all of it."""
    extents = data_extents(fi, st.st_size) if is_sparse(st) else None
    if extents is None:
        while os.sendfile(fo, fi, None, 1 << 30) > 0:
            pass
        return
    os.ftruncate(fo, st.st_size)
    for off, length in extents:
        os.lseek(fo, off, os.SEEK_SET)
        done = 0
        while done < length:
            n = os.sendfile(fo, fi, off + done, length - done)
            if n <= 0:
                break  # (the file shrank under us: what is left stays a hole)
            done += n
