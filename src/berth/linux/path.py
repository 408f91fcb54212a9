"""Resolve paths inside a guest's root without letting symlinks or '..' lead outside it."""

from __future__ import annotations

import errno
import os
import stat

_MAX_LINKS = 255


def secure_join(root: str, unsafe: str) -> str:
    """``root`` + ``unsafe`` with every symlink resolved as if ``root`` were ``/``.

    The result is always inside ``root`` (like chroot would see it); components that
    do not exist yet are appended as they are.  This is the path-walk of
    filepath-securejoin; callers that mount on the result also re-check it with an
    O_PATH|O_NOFOLLOW open, so a symlink swapped in later is not followed.
    """
    root = os.path.abspath(root)
    pending = [c for c in unsafe.split("/") if c]
    pending.reverse()
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            done.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            done.append(part)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.path.join("/", *done, part))
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        more = [c for c in target.split("/") if c]
        more.reverse()
        pending.extend(more)
    return os.path.join(root, *done)


def mkdir_all(root: str, unsafe: str, mode: int = 0o755) -> str:
    """Create ``unsafe`` (and its parents) inside ``root``; return the resolved path."""
    path = secure_join(root, unsafe)
    rel = os.path.relpath(path, root)
    cur = root
    if rel != ".":
        for part in rel.split("/"):
            cur = os.path.join(cur, part)
            try:
                os.mkdir(cur, mode)
            except FileExistsError:
                st = os.lstat(cur)
                if stat.S_ISLNK(st.st_mode):
                    # Raced with a symlink: start again from the top.
                    return mkdir_all(root, unsafe, mode)
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), cur) from None
    return path


def open_in_root(root: str, unsafe: str) -> int:
    """An O_PATH fd to ``unsafe`` inside ``root``, refusing a final symlink."""
    path = secure_join(root, unsafe)
    return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)


def fd_path(fd: int) -> str:
    """/proc/self/fd/N: mount or open through an fd that was checked to stay inside the root."""
    return f"/proc/self/fd/{fd}"


def inside(root: str, path: str) -> bool:
    """Is ``path`` (resolved) inside ``root``?"""
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(path)]) == root
