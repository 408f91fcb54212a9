"""mounts.host_cgroup_mounts: the host's cgroup mounts read by the runtime before it forks the
init, only where the init's mount namespace is a new copy of the runtime's and it mounts cgroups;
else None (the init reads its own mountinfo)."""

from __future__ import annotations

from berth.runtime import mounts

CGROUP_MOUNT = {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]}


def spec(namespaces: list[dict[str, str]], mount_list: list[dict[str, object]]) -> dict[str, object]:
    return {"mounts": mount_list, "linux": {"namespaces": namespaces}}


def test_a_new_mount_namespace_with_a_cgroup_mount_gets_the_hosts_list() -> None:
    got = mounts.host_cgroup_mounts(spec([{"type": "mount"}], [CGROUP_MOUNT]))
    assert got == mounts._cgroup_mounts()  # the same list the init would read itself


def test_no_cgroup_mount_reads_nothing() -> None:
    proc = {"destination": "/proc", "type": "proc", "source": "proc"}
    assert mounts.host_cgroup_mounts(spec([{"type": "mount"}], [proc])) is None


def test_a_joined_mount_namespace_is_read_by_the_init_inside_it() -> None:
    joined = [{"type": "mount", "path": "/proc/1/ns/mnt"}]
    assert mounts.host_cgroup_mounts(spec(joined, [CGROUP_MOUNT])) is None


def test_no_mount_namespace_of_its_own_reads_nothing() -> None:
    assert mounts.host_cgroup_mounts(spec([{"type": "pid"}], [CGROUP_MOUNT])) is None
