"""cgroup layout detection (mountinfo parsing) and cgroupsPath validation: pure, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.cgroups import open_cgroup
from berth.cgroups.layout import Layout, clean_path, parse_mountinfo
from berth.errors import CgroupError, UsageError

DATA = Path(__file__).parent / "data"

V2_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""

V1_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid - cgroup cgroup rw,net_cls,net_prio
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/my\\040dir rw - cgroup cgroup rw,pids
37 22 0:34 / /other/cpuset rw - cgroup cgroup rw,cpuset
"""


def test_this_hosts_hybrid_mountinfo() -> None:
    layout = parse_mountinfo((DATA / "cgroups_mountinfo_hybrid.txt").read_text())
    assert layout.mode == "hybrid"
    assert layout.unified == "/sys/fs/cgroup/unified"
    assert layout.v1["memory"] == "/sys/fs/cgroup/memory"
    assert layout.v1["systemd"] == "/sys/fs/cgroup/systemd"
    assert set(layout.v1) == {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "systemd",
    }
    assert layout.mountpoints()[-1] == "/sys/fs/cgroup/unified"
    assert len(layout.mountpoints()) == 10


def test_pure_v2() -> None:
    layout = parse_mountinfo(V2_MOUNTINFO)
    assert layout == Layout("v2", {}, "/sys/fs/cgroup")
    assert layout.mountpoints() == ["/sys/fs/cgroup"]


def test_v1_comounted_named_escaped_and_outside_root() -> None:
    layout = parse_mountinfo(V1_MOUNTINFO)
    assert layout.mode == "v1"
    assert layout.unified is None
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1["net_prio"] == "/sys/fs/cgroup/net_cls,net_prio"
    assert layout.v1["systemd"] == "/sys/fs/cgroup/systemd"
    assert layout.v1["pids"] == "/sys/fs/cgroup/my dir"
    assert "cpuset" not in layout.v1  # mounted outside the root
    assert "xattr" not in layout.v1
    assert "release_agent" not in str(layout.v1)
    # co-mounted hierarchies are listed once
    assert layout.mountpoints().count("/sys/fs/cgroup/cpu,cpuacct") == 1


def test_other_root() -> None:
    layout = parse_mountinfo(V1_MOUNTINFO, root="/other")
    assert layout.v1 == {"cpuset": "/other/cpuset"}


def test_no_cgroups() -> None:
    with pytest.raises(CgroupError, match="no cgroup hierarchy"):
        parse_mountinfo("22 27 0:21 / /proc rw,relatime - proc proc rw\n")


@pytest.mark.parametrize(
    ("path", "clean"),
    [("berth/web1", "berth/web1"), ("/berth/web1", "berth/web1"), ("berth//web1/", "berth/web1"), ("x", "x")],
)
def test_clean_path(path: str, clean: str) -> None:
    assert clean_path(path) == clean


@pytest.mark.parametrize("path", ["", "/", "//", "berth/../etc", "..", "./x", "a/./b", "a\0b"])
def test_clean_path_refuses(path: str) -> None:
    with pytest.raises(UsageError) as err:
        clean_path(path)
    assert err.value.field == "cgroupsPath"


def test_open_cgroup_dirs() -> None:
    layout = parse_mountinfo((DATA / "cgroups_mountinfo_hybrid.txt").read_text())
    cg = open_cgroup("/berth/web1", layout)
    assert cg.path == "berth/web1"
    assert cg.unified_dir() == "/sys/fs/cgroup/unified/berth/web1"
    assert cg.dir("memory") == "/sys/fs/cgroup/memory/berth/web1"
    assert cg.dir("hugetlb") is None
    assert len(cg.dirs()) == 10
    v1 = open_cgroup("a", parse_mountinfo(V1_MOUNTINFO))
    assert v1.unified_dir() is None
    with pytest.raises(UsageError):
        open_cgroup("../x", layout)
