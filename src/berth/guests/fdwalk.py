"""Reading a tree that someone else may be changing while it is read (a running guest's upper
layer, which the migration pre-copy reads) without ever leaving it.

The root is opened once (``O_DIRECTORY | O_NOFOLLOW``); every directory below is opened relative
to its parent's descriptor (``openat`` with ``O_NOFOLLOW | O_DIRECTORY``), every other entry is
pinned first with an ``O_PATH | O_NOFOLLOW`` descriptor relative to its directory's, and only
once that descriptor's ``fstat`` says it is a regular file is it opened for reading (through
``/proc/self/fd``: the inode pinned, not the name again, so a name swapped for a fifo or a device
node is never opened).  No path is ever resolved from ``/`` below the root, so a directory the
guest swaps for a symlink to a host directory while the walk goes is, at worst, an entry
skipped: nothing outside the root is read.  A directory on another filesystem (a mount point
inside the tree on this host) is not entered, and a directory whose inode changed between its
listing and its opening (swapped for another one) is not entered either: what the walk yields
under a name always comes from the directory it yielded under that name.

What is yielded is what was read, with the ``fstat`` of the very descriptor read from; the
caller keeps those stats as the manifest the delta after the freeze is compared against
(:func:`berth.guests.transfer.delta`): whatever the walk skipped or read before a change is sent
again then.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PIN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# An entry that went, or changed kind, between its directory's listing and its opening.
_GONE = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.ENODEV})


class Entry:
    """One entry of the tree: ``rel`` its path below the root ("" for the root itself), ``st``
    the ``fstat`` of what was opened (or, walking for stats only, its ``fstatat``), ``fd`` an
    open descriptor on it when it is a regular file (``O_RDONLY``) or a directory read for its
    attributes (-1 otherwise), ``dfd``/``base`` its directory's descriptor and its name there.
    The descriptors belong to the walk: valid until the next entry is asked for."""

    __slots__ = ("base", "dfd", "fd", "owned", "rel", "st")

    def __init__(
        self, rel: str, st: os.stat_result, fd: int, dfd: int, base: str, *, owned: bool = True
    ) -> None:
        self.rel, self.st, self.fd, self.dfd, self.base = rel, st, fd, dfd, base
        self.owned = owned

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    def readlink(self) -> str:
        """A symlink's target (read by its name in its pinned directory)."""
        return os.readlink(self.base, dir_fd=self.dfd)

    def xattrs(self) -> dict[str, bytes]:
        """The entry's extended attributes: through its own descriptor (a file, a directory),
        else by its name in its pinned directory, the name itself not followed."""
        if self.fd >= 0:
            return _xattrs(self.fd)
        return _xattrs(f"/proc/self/fd/{self.dfd}/{self.base}")

    def close(self) -> None:
        if self.fd >= 0 and self.owned:
            os.close(self.fd)
        self.fd = -1


def _xattrs(target: int | str) -> dict[str, bytes]:
    follow = isinstance(target, int)  # a descriptor: itself; a path: its last component not followed
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return {}
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(target, n, follow_symlinks=follow)
        except OSError:
            continue
    return out


def root(path: str) -> Entry:
    """The directory ``path`` itself (the top of a tree: its path is the host's own), opened
    ``O_DIRECTORY | O_NOFOLLOW``; the caller closes it."""
    fd = os.open(path, DIR_FLAGS)
    return Entry("", os.fstat(fd), fd, -1, os.path.basename(path))


def look(dfd: int, base: str, rel: str, isdir: bool | None = None, *, read: bool = True) -> Entry | None:
    """The entry ``base`` of the directory ``dfd`` (its path ``rel``), opened as described
    above; None if it went or changed kind under us (``isdir``: the listing's word for it, a
    hint only).  ``read=False``: its stat only (``fstatat`` without following), nothing opened."""
    try:
        if isdir and read:
            fd = os.open(base, DIR_FLAGS, dir_fd=dfd)
            return Entry(rel, os.fstat(fd), fd, dfd, base)
        if not read:
            return Entry(rel, os.stat(base, dir_fd=dfd, follow_symlinks=False), -1, dfd, base)
        pin = os.open(base, _PIN_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    try:
        st = os.fstat(pin)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return Entry(rel, st, -1, dfd, base)
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if stat.S_ISDIR(st.st_mode) else 0)
        try:
            fd = os.open(f"/proc/self/fd/{pin}", flags)  # the pinned inode itself
        except OSError as e:
            if e.errno in _GONE:
                return None
            raise
        return Entry(rel, st, fd, dfd, base)
    finally:
        os.close(pin)


def _listing(dfd: int) -> list[tuple[str, bool]]:
    with os.scandir(dfd) as it:  # scandir reads a duplicate of the descriptor
        return sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)


def _subdir(dfd: int, name: str, want: os.stat_result) -> int | None:
    """The subdirectory ``name`` of ``dfd`` opened again for its listing, if it is still the
    directory that was yielded under that name (same inode and filesystem)."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (want.st_dev, want.st_ino):
        os.close(fd)
        return None
    return fd


def walk(path: str, *, read: bool = True) -> Iterator[Entry]:
    """Every entry of the tree at ``path``: the root first (rel ""), then each directory's
    entries (names sorted) before the contents of its subdirectories (in the same order).
    Depth-first with one descriptor open per level; nothing is built for the whole tree.
    ``read=False``: stats only (a manifest, a delta), no entry opened but the directories."""
    rootfd = os.open(path, DIR_FLAGS)
    levels: list[tuple[int, str, list[tuple[str, os.stat_result]]]] = []
    dfd = -1
    try:
        top = os.fstat(rootfd)
        yield Entry("", top, rootfd, -1, os.path.basename(path), owned=False)
        dfd, rel = rootfd, ""
        while True:
            subdirs: list[tuple[str, os.stat_result]] = []
            for name, isdir in _listing(dfd):
                e = look(dfd, name, f"{rel}/{name}" if rel else name, isdir, read=read)
                if e is None:
                    continue
                if e.is_dir and e.st.st_dev != top.st_dev:
                    e.close()  # a mount point on this host: not the guest's
                    continue
                try:
                    yield e
                finally:
                    e.close()
                if e.is_dir:
                    subdirs.append((name, e.st))
            subdirs.reverse()  # popped from the end: in name order
            levels.append((dfd, rel, subdirs))
            dfd = -1
            while levels and dfd < 0:
                pfd, prel, todo = levels[-1]
                if not todo:
                    levels.pop()
                    if pfd != rootfd:
                        os.close(pfd)
                    continue
                name, want = todo.pop()
                fd = _subdir(pfd, name, want)
                if fd is not None:
                    dfd, rel = fd, f"{prel}/{name}" if prel else name
            if dfd < 0:
                return
    finally:
        if dfd >= 0 and dfd != rootfd:  # a directory being listed (not in levels yet)
            os.close(dfd)
        for pfd, _rel, _todo in levels:
            if pfd != rootfd:
                os.close(pfd)
        os.close(rootfd)


class Lookup:
    """Entries of the tree at ``root`` by their relative paths (the delta after the freeze):
    each path walked down from the root one component at a time (``O_NOFOLLOW | O_DIRECTORY``
    relative to the last one's descriptor), the last directory kept for the next path in it."""

    def __init__(self, root: str) -> None:
        self.rootfd = os.open(root, DIR_FLAGS)
        self.dev = os.fstat(self.rootfd).st_dev
        self._cached: tuple[str, int] | None = None

    def _parent(self, reldir: str) -> int | None:
        if self._cached is not None and self._cached[0] == reldir:
            return self._cached[1]
        self._drop()
        fd = os.dup(self.rootfd)
        for part in reldir.split("/") if reldir else ():
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                os.close(fd)
                if e.errno in _GONE:
                    return None
                raise
            os.close(fd)
            fd = nfd
            if os.fstat(fd).st_dev != self.dev:
                os.close(fd)
                return None
        self._cached = (reldir, fd)
        return fd

    def get(self, rel: str) -> Entry | None:
        """The entry ``rel`` (no empty, ``.`` or ``..`` component), or None if it is not there
        by this walk's rules (gone, below a symlink or a non-directory, on another filesystem)."""
        parts = rel.split("/")
        if not rel or rel.startswith("/") or {"", ".", ".."} & set(parts):
            return None
        reldir, _, base = rel.rpartition("/")
        dfd = self._parent(reldir)
        if dfd is None:
            return None
        e = look(dfd, base, rel)
        if e is not None and e.is_dir and e.st.st_dev != self.dev:
            e.close()
            return None
        return e

    def _drop(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def close(self) -> None:
        self._drop()
        os.close(self.rootfd)

    def __enter__(self) -> Lookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
