"""The executor's routing on a fake hierarchy tree in tmp_path (plain files, no kernel, no root):
which directory each write goes to on v1, v2 and hybrid layouts, and how refusals are reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.cgroups import open_cgroup
from berth.cgroups.layout import Layout
from berth.errors import CgroupError, UsageError


def fake(tmp_path: Path, mode: str, v1: list[str], unified_ctl: str = "") -> Layout:
    mounts = {c: str(tmp_path / c) for c in v1}
    for m in mounts.values():
        Path(m).mkdir()
    unified = None
    if mode != "v1":
        u = tmp_path / "unified"
        u.mkdir()
        (u / "cgroup.controllers").write_text(unified_ctl + "\n")
        (u / "cgroup.subtree_control").write_text("\n")
        unified = str(u)
    return Layout(mode, mounts, unified, str(tmp_path))


def test_create_and_route_v1(tmp_path: Path) -> None:
    layout = fake(tmp_path, "v1", ["memory", "pids", "devices"])
    cg = open_cgroup("/par/leaf", layout)
    cg.create()
    assert cg.exists()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("leaf")) == [
        "devices/par/leaf",
        "memory/par/leaf",
        "pids/par/leaf",
    ]
    res = {
        "memory": {"limit": 1 << 20},
        "pids": {"limit": 5},
        "cpu": {"shares": 100},
        "devices": [{"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3}],
    }
    plan = [(Path(d).relative_to(tmp_path).as_posix(), w.file, w.value) for d, w in cg.plan(res)]
    assert plan == [
        ("memory/par/leaf", "memory.limit_in_bytes", "1048576"),
        ("pids/par/leaf", "pids.max", "5"),
        ("devices/par/leaf", "devices.deny", "a *:* rwm"),
        ("devices/par/leaf", "devices.allow", "c 1:3 rwm"),
    ]  # cpu: no hierarchy, skipped as runc does
    for f in ("pids/par/leaf/pids.max", "memory/par/leaf/memory.limit_in_bytes"):
        (tmp_path / f).write_text("")  # the kernel makes these files; a plain tree needs them made
    cg.set({"pids": {"limit": 5}, "memory": {"limit": 1 << 20}})
    assert (tmp_path / "pids/par/leaf/pids.max").read_text() == "5"
    with pytest.raises(UsageError):
        cg.set({"unified": {"memory.high": "1"}})


def test_hybrid_routes_hugetlb_and_unified_to_cgroup2(tmp_path: Path) -> None:
    layout = fake(tmp_path, "hybrid", ["memory", "cpu"], unified_ctl="hugetlb")
    cg = open_cgroup("b/c", layout)
    res = {
        "memory": {"limit": 100},
        "cpu": {"shares": 10},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "unified": {"cgroup.max.depth": "2"},
    }
    plan = [(Path(d).relative_to(tmp_path).as_posix(), w.file, w.value) for d, w in cg.plan(res)]
    assert plan == [
        ("cpu/b/c", "cpu.shares", "10"),
        ("memory/b/c", "memory.limit_in_bytes", "100"),
        ("unified/b/c", "hugetlb.2MB.max", "0"),
        ("unified/b/c", "cgroup.max.depth", "2"),
    ]
    with pytest.raises(UsageError, match="not available"):
        cg.plan({"unified": {"memory.high": "1"}})  # memory is v1's on this host


def test_v2_create_enables_controllers_in_ancestors(tmp_path: Path) -> None:
    layout = fake(tmp_path, "v2", [], unified_ctl="cpu memory pids")
    u = tmp_path / "unified"
    cg = open_cgroup("a/b", layout)
    # a real kernel fills these in; on plain files, pre-create the parent's
    (u / "a").mkdir()
    (u / "a" / "cgroup.controllers").write_text("cpu memory pids\n")
    (u / "a" / "cgroup.subtree_control").write_text("cpu\n")
    cg.create()
    assert (u / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (u / "a" / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_refused_write_names_file_value_and_errno(tmp_path: Path) -> None:
    layout = fake(tmp_path, "v1", ["pids"])
    cg = open_cgroup("x", layout)
    cg.create()
    (tmp_path / "pids/x/pids.max").mkdir()  # writing to a directory: EISDIR
    with pytest.raises(CgroupError) as err:
        cg.set({"pids": {"limit": 7}})
    msg = str(err.value)
    assert "pids/x/pids.max" in msg
    assert "'7'" in msg
    assert "EISDIR" in msg
    assert "\n" not in msg


def test_create_failure_removes_what_it_made(tmp_path: Path) -> None:
    layout = fake(tmp_path, "v1", ["memory", "pids"])
    (tmp_path / "pids" / "p").write_text("a file where a directory should go")
    cg = open_cgroup("p/leaf", layout)
    with pytest.raises(CgroupError, match="create cgroup p/leaf"):
        cg.create()
    assert not (tmp_path / "memory" / "p").exists()


def test_remove_empty_parents_checks_upto(tmp_path: Path) -> None:
    layout = fake(tmp_path, "v1", ["pids"])
    cg = open_cgroup("a/b/c", layout)
    with pytest.raises(UsageError):
        cg.remove_empty_parents("x")
    (tmp_path / "pids/a/b").mkdir(parents=True)
    cg.remove_empty_parents("a")
    assert not (tmp_path / "pids/a").exists()


def test_remove_empty_parents_keeps_the_hosts_own(tmp_path: Path) -> None:
    """A systemd unit's cgroup (the host's) stays, even empty and given as ``upto``; so does what
    is above it.  Below it, berth's empty parents go; a parent with another child stays."""
    layout = fake(tmp_path, "v1", ["pids"])
    (tmp_path / "pids/machine.slice/berth/x").mkdir(parents=True)
    open_cgroup("machine.slice/berth/x/g", layout).remove_empty_parents("machine.slice")
    assert not (tmp_path / "pids/machine.slice/berth").exists()
    assert (tmp_path / "pids/machine.slice").is_dir()
    (tmp_path / "pids/a/u.scope/b").mkdir(parents=True)
    open_cgroup("a/u.scope/b/g", layout).remove_empty_parents("a")
    assert not (tmp_path / "pids/a/u.scope/b").exists()
    assert (tmp_path / "pids/a/u.scope").is_dir()
    (tmp_path / "pids/p/other").mkdir(parents=True)
    open_cgroup("p/g", layout).remove_empty_parents("p")
    assert (tmp_path / "pids/p/other").is_dir()
