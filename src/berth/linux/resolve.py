"""Opening a directory inside a root that path resolution may not leave: openat2(2).

A path a guest controls (a process's working directory) is resolved from a descriptor of the
guest's root with ``RESOLVE_IN_ROOT`` (``..`` and absolute symlinks stop at that root) and
``RESOLVE_NO_MAGICLINKS`` (``/proc/self/fd/N``, ``/proc/PID/cwd`` and the like are refused:
followed, they lead to whatever file the resolving process holds open, however far outside the
root).  What the process holds open then does not matter.

openat2 (Linux 5.6) has no glibc wrapper; its number is the same on every architecture (437:
it came after the syscall tables were unified in Linux 5.1).  Where the kernel lacks it, a walk
one component at a time stands in (:func:`walk`): every component opened ``O_NOFOLLOW``, every
symlink read as text and resolved again from the root, ``..`` taken from the walk's own stack,
so no symlink, magic or not, is ever followed by the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct

from berth.linux.libc import libc

SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# struct open_how { __u64 flags; __u64 mode; __u64 resolve; }
_HOW = struct.Struct("=QQQ")
_MAX_LINKS = 40  # the kernel's MAXSYMLINKS
_EAGAIN_TRIES = 64  # RESOLVE_IN_ROOT answers EAGAIN when a rename or mount raced the walk
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

libc.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None  # None: not tried yet


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): a new fd, or :class:`OSError` (``ENOSYS`` where the kernel lacks it)."""
    how = ctypes.create_string_buffer(_HOW.pack(flags, mode, resolve), _HOW.size)
    fd = int(
        libc.syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_long(dir_fd),
            ctypes.c_char_p(os.fsencode(path)),
            how,
            ctypes.c_long(_HOW.size),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _open_in_root(root_fd: int, path: str) -> int:
    """An O_PATH fd of the directory ``path`` resolved inside ``root_fd``, by openat2."""
    for _ in range(_EAGAIN_TRIES):
        try:
            return openat2(root_fd, path or ".", _DIR, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        except BlockingIOError:
            continue
    raise OSError(errno.EAGAIN, "the path kept changing while it was resolved", path)


def has_openat2() -> bool:
    """Does this kernel have openat2(2)?  (Asked once.)"""
    global _have_openat2
    if _have_openat2 is None:
        try:
            os.close(openat2(-100, "/", _DIR, 0))  # AT_FDCWD
            _have_openat2 = True
        except OSError as e:
            _have_openat2 = e.errno != errno.ENOSYS
    return _have_openat2


def open_dir_in_root(root_fd: int, path: str, *, create_mode: int | None = None) -> int:
    """An ``O_PATH|O_DIRECTORY`` fd of ``path`` resolved with ``root_fd`` as ``/``, never
    leaving it and never through a magic link (``ELOOP``).

    ``create_mode``: make the directories that are missing, one at a time (mkdirat in the
    directory the walk reached: as ``mkdir -p``, but never through a symlink out of the root);
    if the path still does not resolve afterwards, those made are removed again."""
    global _have_openat2
    native = _have_openat2 is not False
    if native:
        try:
            return _open_in_root(root_fd, path)
        except FileNotFoundError:
            if create_mode is None:
                raise
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            _have_openat2 = native = False
    created: list[tuple[int, str]] = []
    try:
        fd = walk(root_fd, path, create_mode=create_mode, created=created)
        if native:
            # What the kernel resolves is what is entered: the walk reads a magic link as text
            # (and /proc/self/fd/N may have named one of the walk's own fds, gone now).
            os.close(fd)
            fd = _open_in_root(root_fd, path)
    except BaseException:
        for parent, name in reversed(created):
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                pass
        raise
    finally:
        for parent, _name in created:
            os.close(parent)
    return fd


def walk(
    root_fd: int,
    path: str,
    *,
    create_mode: int | None = None,
    created: list[tuple[int, str]] | None = None,
) -> int:
    """:func:`open_dir_in_root` without openat2: one component at a time, each opened
    ``O_NOFOLLOW``; a symlink's text resolved again (from the root when absolute), ``..`` from
    the walk's own stack of directories (never above the root).  ``created`` collects
    (parent fd, name) of each directory made (the caller closes the fds)."""
    stack = [os.open(".", _DIR, dir_fd=root_fd)]
    pending = [c for c in reversed(path.split("/")) if c not in ("", ".")]
    links = 0
    try:
        while pending:
            part = pending.pop()
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                fd = os.open(part, _NOFOLLOW, dir_fd=stack[-1])
            except FileNotFoundError:
                if create_mode is None:
                    raise
                os.mkdir(part, create_mode, dir_fd=stack[-1])
                if created is not None:
                    created.append((os.dup(stack[-1]), part))
                fd = os.open(part, _NOFOLLOW, dir_fd=stack[-1])
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                os.close(fd)
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(part, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending.extend(c for c in reversed(target.split("/")) if c not in ("", "."))
                continue
            if not stat.S_ISDIR(mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            stack.append(fd)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)
