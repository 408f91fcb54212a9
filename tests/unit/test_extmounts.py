"""Which of a guest's mounts CRIU must take as external, on mountinfo captured from real guests
(a default guest in a user namespace with lxcfs, restored; a --userns host guest with tini)."""

from __future__ import annotations

from pathlib import Path

from berth.linux.mount import MS
from berth.runtime import extmounts

DATA = Path(__file__).parent / "data"


def _load(name: str) -> list[dict[str, str]]:
    return extmounts.parse((DATA / name).read_text())


def test_userns_guest_device_masks_lxcfs_and_tini_are_external() -> None:
    ext = extmounts.external(_load("extmounts_guest_userns.mountinfo"), _load("extmounts_host.mountinfo"))
    where = {e["mnt"]: e["host"] for e in ext}
    # The device nodes and the masked /proc files are binds of the host's devtmpfs nodes.
    assert where["/dev/null"] == "/dev/null"
    assert where["/dev/zero"] == "/dev/zero"
    assert where["/proc/timer_list"] == "/dev/null"
    assert where["/proc/keys"] == "/dev/null"
    # lxcfs's files, from its mount point; tini from the host's root.
    assert where["/proc/meminfo"] == "/run/hH-lxcfs/proc/meminfo"
    assert where["/sys/devices/system/cpu/online"] == "/run/hH-lxcfs/sys/devices/system/cpu/online"
    assert where["/dev/.berth-init"] == "/usr/bin/tini-static"
    # CRIU re-creates these itself: the root, whole tmpfs/proc/sysfs mounts, proc subtrees,
    # and (without cgroups=True) the cgroup hierarchies.
    for mnt in ("/", "/dev", "/dev/shm", "/dev/pts", "/proc", "/proc/sys", "/sys", "/sys/fs/cgroup"):
        assert mnt not in where, mnt
    assert not any(m.startswith("/sys/fs/cgroup/") for m in where)
    assert all(not e.get("cgroup") for e in ext)


def test_userns_guest_cgroups_external_and_moved() -> None:
    guest, host = _load("extmounts_guest_userns.mountinfo"), _load("extmounts_host.mountinfo")
    ext = {e["mnt"]: e for e in extmounts.external(guest, host, cgroups=True)}
    cpu = ext["/sys/fs/cgroup/cpu"]
    assert cpu["cgroup"] and cpu["host"] == "/sys/fs/cgroup/cpu/hH/ck1"
    assert ext["/sys/fs/cgroup/unified"]["host"] == "/sys/fs/cgroup/unified/hH/ck1"
    assert ext["/sys/fs/cgroup/systemd"]["host"] == "/sys/fs/cgroup/systemd/hH/ck1"
    assert extmounts.moved_cgroup(cpu["host"], "hH/ck1", "other/b/ck1") == "/sys/fs/cgroup/cpu/other/b/ck1"
    assert extmounts.moved_cgroup(cpu["host"], "hH/ck1", "/hH/ck1/") == cpu["host"]
    assert extmounts.moved_cgroup(cpu["host"], "x/y", "a/b") == cpu["host"]  # not its cgroup: kept


def test_host_userns_guest_only_tini_is_external() -> None:
    # Its /dev/null is a node on its own /dev tmpfs: the masks are binds CRIU can follow.
    ext = extmounts.external(_load("extmounts_guest_hostns.mountinfo"), _load("extmounts_host.mountinfo"))
    assert [(e["mnt"], e["host"]) for e in ext] == [("/dev/.berth-init", "/usr/bin/tini-static")]


def test_host_path_unknown_is_none() -> None:
    guest = extmounts.parse("1 0 0:99 / / rw - overlay overlay rw\n2 1 0:77 /a/b /x rw - ext4 /dev/sdz rw\n")
    host = extmounts.parse("27 1 254:0 / / rw - ext4 /dev/vda rw\n")
    assert extmounts.external(guest, host) == [{"mnt": "/x", "host": None}]


def test_longest_host_root_wins_and_escapes() -> None:
    guest = extmounts.parse("1 0 0:99 / / rw - overlay o rw\n2 1 0:7 /d/e\\040f /in\\040x rw - ext4 s rw\n")
    host = extmounts.parse("3 1 0:7 / /top rw - ext4 s rw\n4 1 0:7 /d /deep rw - ext4 s rw\n")
    assert extmounts.external(guest, host) == [{"mnt": "/in x", "host": "/deep/e f"}]


def test_mount_flags() -> None:
    assert extmounts.mount_flags("rw,nosuid") == MS.NOSUID | MS.STRICTATIME
    assert (
        extmounts.mount_flags("rw,nosuid,nodev,noexec,relatime")
        == MS.NOSUID | MS.NODEV | MS.NOEXEC | MS.RELATIME
    )
    assert extmounts.mount_flags("ro,noatime") == MS.NOATIME
    assert extmounts.mount_flags("") == 0


def test_sysfs_bound_from_the_host_is_external_when_asked() -> None:
    # A guest in its own user namespace on the host's network stack (ip: mode): /sys is the
    # host's sysfs (cloned without its child mounts), the guest's own tmpfs and cgroup below.
    guest = extmounts.parse(
        "1 0 0:99 / / rw - overlay overlay rw\n"
        "2 1 0:21 / /sys ro,nosuid,nodev,noexec - sysfs sysfs rw\n"
        "6 2 0:88 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "7 6 0:31 /b/g /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "8 2 0:55 /sys/devices/system/cpu/online /sys/devices/system/cpu/online rw - fuse.lxcfs lxcfs rw\n"
    )
    host = extmounts.parse(
        "21 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "22 21 0:21 / /sys rw,nosuid,nodev,noexec - sysfs sysfs rw\n"
        "24 22 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "60 21 0:55 / /run/l rw - fuse.lxcfs lxcfs rw\n"
    )
    assert [e["mnt"] for e in extmounts.external(guest, host)] == ["/sys/devices/system/cpu/online"]
    ext = extmounts.external(guest, host, cgroups=True, sysfs=True)
    assert [e for e in ext if e.get("sysfs")] == [{"mnt": "/sys", "host": "/sys", "sysfs": True}]
    where = {e["mnt"]: e["host"] for e in ext}
    assert where["/sys/fs/cgroup/cpu"] == "/sys/fs/cgroup/cpu/b/g"
    assert where["/sys/devices/system/cpu/online"] == "/run/l/sys/devices/system/cpu/online"
    assert "/sys/fs/cgroup" not in where
