"""Idmapped mounts: open_tree(2), mount_setattr(2) with MOUNT_ATTR_IDMAP, move_mount(2).

An idmapped mount shows a tree's files through a user namespace's id mapping: a template
owned by host root appears owned by a guest's mapped root, with no chown of the files
(Linux 5.12+; overlayfs over idmapped layers since 5.19).  glibc 2.36 (Debian 12) wraps
all three calls, so no syscall numbers are kept here.  Making an idmapped mount needs
CAP_SYS_ADMIN in the user namespace that owns the mount: the host's root does it and hands
the detached mount's fd to the guest's init.
"""

from __future__ import annotations

import ctypes
import errno
import os

from berth.linux.libc import check, fs, libc

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x00100000


class MountAttr(ctypes.Structure):
    """struct mount_attr (MOUNT_ATTR_SIZE_VER0 = 32 bytes)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


libc.open_tree.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.open_tree.restype = ctypes.c_int
libc.move_mount.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.move_mount.restype = ctypes.c_int
libc.mount_setattr.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
    ctypes.POINTER(MountAttr),
    ctypes.c_size_t,
]
libc.mount_setattr.restype = ctypes.c_int


def open_tree(path: str, flags: int = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC, dfd: int = AT_FDCWD) -> int:
    """open_tree(2): with OPEN_TREE_CLONE, a detached copy of the mount at ``path`` (an fd)."""
    return check(libc.open_tree(dfd, fs(path), flags), f"open_tree({path!r}, {flags:#x})")


def mount_setattr(fd: int, attr: MountAttr, *, path: str = "", flags: int = AT_EMPTY_PATH) -> None:
    """mount_setattr(2) on the mount ``fd`` refers to (``path`` relative to it)."""
    ret = libc.mount_setattr(fd, fs(path), flags, ctypes.byref(attr), ctypes.sizeof(attr))
    check(ret, f"mount_setattr({fd}, attr_set={attr.attr_set:#x}, userns_fd={attr.userns_fd})")


def move_mount(
    from_fd: int,
    to_path: str,
    *,
    from_path: str = "",
    to_fd: int = AT_FDCWD,
    flags: int = MOVE_MOUNT_F_EMPTY_PATH,
) -> None:
    """move_mount(2): attach the (detached) mount ``from_fd`` at ``to_path``."""
    ret = libc.move_mount(from_fd, fs(from_path), to_fd, fs(to_path), flags)
    check(ret, f"move_mount({from_fd}, {to_path!r}, {flags:#x})")


def idmapped_tree(path: str, userns_fd: int, *, recursive: bool = True) -> int:
    """A detached copy of the tree at ``path`` seen through ``userns_fd``'s id mapping (an fd).

    The fd serves as a path (``/proc/self/fd/N``, say as an overlay lower layer) or is
    attached with :func:`move_mount`.  Fails with EINVAL where the filesystem cannot idmap.
    """
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    fd = open_tree(path, flags)
    try:
        attr = MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        mount_setattr(fd, attr, flags=AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0))
    except BaseException:
        os.close(fd)
        raise
    return fd


def idmapped_trees(paths: list[str], userns_fd: int) -> list[int]:
    """:func:`idmapped_tree` of each path (fds, in order); none left open if one fails.  The
    OSError raised carries the failing path as ``filename``."""
    fds: list[int] = []
    try:
        for path in paths:
            try:
                fds.append(idmapped_tree(path, userns_fd))
            except OSError as e:
                e.filename = path
                raise
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def userns_fd(uid_map: str, gid_map: str) -> int:
    """An fd of a new, empty user namespace with these maps ("inside outside count" lines).

    For idmapping a tree before any guest exists (a support check, a shifted view): a forked
    child unshares the user namespace and waits; we write its maps, open it and end the child.
    """
    from berth.linux.ns import Clone, unshare

    r, w = os.pipe2(os.O_CLOEXEC)  # our end closing lets the child go
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)  # a byte once the child is in its namespace
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.close(ready_r)
            unshare(Clone.NEWUSER)
            os.write(ready_w, b"1")
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    os.close(ready_w)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(errno.EPERM, "unshare(CLONE_NEWUSER) failed in the mapping child")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(uid_map)
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(gid_map)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(w)
        os.waitpid(pid, 0)


def supported(path: str, uid_map: str = "0 1000000 1\n", gid_map: str = "0 1000000 1\n") -> OSError | None:
    """Can the filesystem at ``path`` be idmapped?  None, or the error that says why not."""
    ns = userns_fd(uid_map, gid_map)
    try:
        fd = idmapped_tree(path, ns, recursive=False)
    except OSError as e:
        return e
    finally:
        os.close(ns)
    os.close(fd)
    return None
