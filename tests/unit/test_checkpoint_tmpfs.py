"""berth's copy of a container's tmpfs mounts for checkpoints (instead of CRIU's tar): which
mounts it takes, and the tree copy (types, modes, owners, times, hard links, xattrs)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from berth.runtime.checkpoint import copy_tree, parse_tmpfs_mounts

MOUNTINFO = """\
84 44 0:42 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
86 84 0:45 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
88 86 0:47 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
46 85 0:45 /null /proc/interrupts rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
91 90 0:49 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
92 84 0:60 / /my\\040dir rw,relatime shared:5 - tmpfs tmpfs rw
93 84 0:61 / /twice/a rw - tmpfs tmpfs rw
94 84 0:61 / /twice/b rw - tmpfs tmpfs rw
95 84 0:62 / /proc/acpi ro,relatime - tmpfs tmpfs ro
96 84 0:63 / /data rw - ext4 /dev/vda rw
"""


def test_parse_tmpfs_mounts_takes_whole_ones_mounted_once() -> None:
    got = {m["mnt"]: m for m in parse_tmpfs_mounts(MOUNTINFO)}
    # /dev's bind of /null elsewhere does not stop /dev (it is a bind of part of it); a tmpfs
    # mounted whole twice is left to CRIU; ext4 and overlay are not tmpfs.
    assert sorted(got) == ["/dev", "/dev/shm", "/my dir", "/proc/acpi", "/sys/fs/cgroup"]
    assert got["/dev"]["dev"] == os.makedev(0, 45)
    assert got["/dev/shm"]["source"] == "shm"
    assert got["/dev/shm"]["options"] == "rw,size=65536k"
    assert got["/dev/shm"]["mnt_options"] == "rw,nosuid,nodev,noexec,relatime"
    assert got["/proc/acpi"]["options"] == "ro"


def test_copy_tree_keeps_types_modes_links_and_times(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("device nodes and owners need root")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(mode=0o1777)
    os.chmod(src, 0o1777)
    (src / "d" / "e").mkdir(parents=True)
    (src / "f").write_bytes(b"x" * 100_000)
    os.chown(src / "f", 1234, 5678)
    os.chmod(src / "f", 0o4711)  # after chown, which drops set-uid
    os.link(src / "f", src / "d" / "hard")
    (src / "l").symlink_to("f")
    os.mkfifo(src / "p")
    os.chmod(src / "p", 0o620)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    try:
        os.setxattr(src / "f", "user.berth", b"v")
        xattr = True
    except OSError:
        xattr = False  # tmp_path's filesystem takes no user xattrs
    os.utime(src / "d" / "e", ns=(1_000_000_000, 2_000_000_000))
    os.utime(src / "d", ns=(1_000_000_000, 3_000_000_000))
    dst.mkdir()
    copy_tree(str(src), str(dst))
    assert stat.S_IMODE(dst.stat().st_mode) == 0o1777
    f = (dst / "f").stat()
    assert (dst / "f").read_bytes() == b"x" * 100_000
    assert stat.S_IMODE(f.st_mode) == 0o4711 and (f.st_uid, f.st_gid) == (1234, 5678)
    assert (dst / "d" / "hard").stat().st_ino == f.st_ino and f.st_nlink == 2
    assert os.readlink(dst / "l") == "f"
    assert stat.S_ISFIFO((dst / "p").lstat().st_mode) and stat.S_IMODE((dst / "p").lstat().st_mode) == 0o620
    n = (dst / "null").lstat()
    assert stat.S_ISCHR(n.st_mode) and n.st_rdev == os.makedev(1, 3)
    assert (dst / "d" / "e").stat().st_mtime_ns == 2_000_000_000
    assert (dst / "d").stat().st_mtime_ns == 3_000_000_000  # set after its entries were made
    if xattr:
        assert os.getxattr(dst / "f", "user.berth") == b"v"


def test_copy_tree_leaves_sockets_out(tmp_path: Path) -> None:
    import socket

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(src / "sock"))
        copy_tree(str(src), str(dst))
    finally:
        s.close()
    assert os.listdir(dst) == []
