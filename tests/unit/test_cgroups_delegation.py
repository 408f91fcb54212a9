"""Which cgroup directories a guest's user namespace root is given (pure: layouts made by hand),
and which guests get it (the spec's namespaces and its system-guest cgroup mount)."""

from __future__ import annotations

from berth.cgroups import Layout, open_cgroup
from berth.runtime.mounts import SYSTEMD_CGROUP_OPTION, cgroup_delegated, systemd_cgroup

HYBRID = Layout(
    "hybrid",
    {"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids", "systemd": "/sys/fs/cgroup/systemd"},
    "/sys/fs/cgroup/unified",
)


def test_hybrid_delegates_name_systemd_and_unified_only() -> None:
    cg = open_cgroup("berth/g1", HYBRID)
    assert cg.delegation_dirs() == ["/sys/fs/cgroup/systemd/berth/g1", "/sys/fs/cgroup/unified/berth/g1"]
    # An OCI bundle's guest: the runtime spec forbids changing ownership on cgroup v1.
    assert cg.delegation_dirs(v1=False) == ["/sys/fs/cgroup/unified/berth/g1"]


def test_v2_delegates_the_cgroup2_dir() -> None:
    cg = open_cgroup("/berth/g1", Layout("v2", {}, "/sys/fs/cgroup"))
    assert cg.delegation_dirs() == ["/sys/fs/cgroup/berth/g1"]


def test_v1_without_name_systemd_delegates_nothing() -> None:
    cg = open_cgroup("berth/g1", Layout("v1", {"memory": "/sys/fs/cgroup/memory"}, None))
    assert cg.delegation_dirs() == []


def spec(namespaces: list[str], cgroup_options: list[str]) -> dict:
    return {
        "linux": {"namespaces": [{"type": n} for n in namespaces]},
        "mounts": [{"destination": "/sys/fs/cgroup", "type": "cgroup", "options": cgroup_options}],
    }


def test_only_system_guests_in_their_own_user_and_cgroup_namespaces() -> None:
    sysd = ["ro", SYSTEMD_CGROUP_OPTION]
    assert cgroup_delegated(spec(["user", "cgroup", "pid", "mount"], sysd))
    assert not cgroup_delegated(spec(["cgroup", "pid", "mount"], sysd))  # --userns host
    assert not cgroup_delegated(spec(["user", "pid", "mount"], sysd))  # the host's cgroup namespace
    assert not cgroup_delegated(spec(["user", "cgroup", "pid", "mount"], ["ro", "nosuid"]))  # not systemd
    assert cgroup_delegated(spec(["user", "cgroup", "pid", "mount"], ["rw", "nosuid"]))  # an OCI rw mount
    assert not cgroup_delegated(spec(["cgroup", "pid", "mount"], ["rw"]))  # no user namespace: never
    joined = spec(["cgroup", "pid"], sysd)
    joined["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    assert not cgroup_delegated(joined)  # a joined user namespace is not the guest's own


def test_v1_name_systemd_only_for_berth_system_guests() -> None:
    assert systemd_cgroup(spec(["user", "cgroup"], ["ro", SYSTEMD_CGROUP_OPTION]))
    assert not systemd_cgroup(spec(["user", "cgroup"], ["rw", "nosuid"]))
