"""OCI linux.resources → cgroup v1 writes (runc's fs mapping): pure, no root."""

from __future__ import annotations

import pytest

from berth.cgroups import v1
from berth.errors import UsageError


def w(resources: dict, **kw) -> list[tuple[str, str, str]]:
    return [x.astuple() for x in v1.writes(resources, **kw)]


def test_empty() -> None:
    assert w({}) == []
    assert w({"cpu": None, "memory": {}, "devices": None}) == []


def test_cpu() -> None:
    res = {
        "cpu": {
            "shares": 512,
            "quota": 50000,
            "period": 100000,
            "burst": 10000,
            "realtimeRuntime": 950,
            "realtimePeriod": 1000,
            "cpus": "0-1",
            "mems": "0",
            "idle": 0,
        }
    }
    assert w(res) == [
        ("cpu", "cpu.rt_period_us", "1000"),
        ("cpu", "cpu.rt_runtime_us", "950"),
        ("cpu", "cpu.shares", "512"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_burst_us", "10000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("cpu", "cpu.idle", "0"),
        ("cpuset", "cpuset.cpus", "0-1"),
        ("cpuset", "cpuset.mems", "0"),
    ]
    writes = v1.writes(res)
    # period and burst may be refused until the quota is in: retried after it
    assert [x.retry for x in writes if x.file in ("cpu.cfs_period_us", "cpu.cfs_burst_us")] == [True, True]


def test_cpu_unlimited_quota_and_period_alone() -> None:
    assert w({"cpu": {"quota": -1}}) == [("cpu", "cpu.cfs_quota_us", "-1")]
    writes = v1.writes({"cpu": {"period": 20000}})
    assert [x.astuple() for x in writes] == [("cpu", "cpu.cfs_period_us", "20000")]
    assert not writes[0].retry  # nothing later could make it pass


def test_cpu_zero_is_unset() -> None:
    assert w({"cpu": {"shares": 0, "quota": 0, "period": 0, "cpus": "", "mems": ""}}) == []


def test_memory_limit_then_swap_on_new_cgroup() -> None:
    res = {"memory": {"limit": 100, "swap": 200, "reservation": 50}}
    assert w(res) == [
        ("memory", "memory.limit_in_bytes", "100"),
        ("memory", "memory.memsw.limit_in_bytes", "200"),
        ("memory", "memory.soft_limit_in_bytes", "50"),
    ]


def test_memory_swap_first_when_raising() -> None:
    # current limit below the new memsw: memsw first, or the kernel refuses limit > memsw
    res = {"memory": {"limit": 300, "swap": 400}}
    assert w(res, mem_limit_now=100) == [
        ("memory", "memory.memsw.limit_in_bytes", "400"),
        ("memory", "memory.limit_in_bytes", "300"),
    ]
    assert w(res, mem_limit_now=1000)[0][1] == "memory.limit_in_bytes"


def test_memory_unlimited_implies_unlimited_swap() -> None:
    assert w({"memory": {"limit": -1}}) == [
        ("memory", "memory.memsw.limit_in_bytes", "-1"),
        ("memory", "memory.limit_in_bytes", "-1"),
    ]
    assert w({"memory": {"limit": -1}}, has_swap=False) == [("memory", "memory.limit_in_bytes", "-1")]


def test_memory_other_fields() -> None:
    res = {
        "memory": {
            "kernel": 1 << 20,
            "kernelTCP": 1 << 20,
            "swappiness": 10,
            "disableOOMKiller": True,
            "useHierarchy": True,
            "checkBeforeUpdate": True,
        }
    }
    assert w(res) == [
        ("memory", "memory.kmem.tcp.limit_in_bytes", "1048576"),
        ("memory", "memory.oom_control", "1"),
        ("memory", "memory.swappiness", "10"),
        ("memory", "memory.use_hierarchy", "1"),
    ]
    assert w({"memory": {"swappiness": -1, "disableOOMKiller": False}}) == []


@pytest.mark.parametrize(
    ("res", "field"),
    [
        ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness"),
        ({"memory": {"limit": 200, "swap": 100}}, "linux.resources.memory.swap"),
        ({"memory": {"limit": "1G"}}, "linux.resources.memory.limit"),
        ({"memory": {"limit": True}}, "linux.resources.memory.limit"),
        ({"cpu": {"shares": -5}}, "linux.resources.cpu.shares"),
        ({"cpu": {"cpus": 3}}, "linux.resources.cpu.cpus"),
        ({"cpu": []}, "linux.resources.cpu"),
        ({"unified": {"memory.high": "1"}}, "linux.resources.unified"),
        ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, "linux.resources.hugepageLimits[0].pageSize"),
        (
            {"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}},
            "linux.resources.blockIO.throttleReadBpsDevice[0]",
        ),
        ({"network": {"priorities": [{"name": "eth0"}]}}, "linux.resources.network.priorities[0]"),
    ],
)
def test_bad_values_name_the_field(res: dict, field: str) -> None:
    with pytest.raises(UsageError) as err:
        v1.writes(res)
    assert err.value.field == field


def test_unified_ok_on_hybrid() -> None:
    assert w({"unified": {"hugetlb.2MB.max": "0"}}, unified_ok=True) == []


@pytest.mark.parametrize(("limit", "value"), [(-1, "max"), (0, "max"), (1, "1"), (4096, "4096")])
def test_pids(limit: int, value: str) -> None:
    assert w({"pids": {"limit": limit}}) == [("pids", "pids.max", value)]


def test_pids_without_limit_does_nothing() -> None:
    assert w({"pids": {}}) == []


def test_blkio_cfq() -> None:
    res = {
        "blockIO": {
            "weight": 500,
            "leafWeight": 300,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 600, "leafWeight": 200}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteBpsDevice": [{"major": 8, "minor": 16, "rate": 2097152}],
            "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 200}],
        }
    }
    assert w(res) == [
        ("blkio", "blkio.weight", "500"),
        ("blkio", "blkio.leaf_weight", "300"),
        ("blkio", "blkio.weight_device", "8:0 600"),
        ("blkio", "blkio.leaf_weight_device", "8:0 200"),
        ("blkio", "blkio.throttle.read_bps_device", "8:0 1048576"),
        ("blkio", "blkio.throttle.write_bps_device", "8:16 2097152"),
        ("blkio", "blkio.throttle.read_iops_device", "8:0 100"),
        ("blkio", "blkio.throttle.write_iops_device", "8:0 200"),
    ]


def test_blkio_bfq() -> None:
    res = {"blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 600}]}}
    assert w(res, bfq=True) == [
        ("blkio", "blkio.bfq.weight", "500"),
        ("blkio", "blkio.bfq.weight_device", "8:0 600"),
    ]


def test_hugetlb() -> None:
    res = {"hugepageLimits": [{"pageSize": "2MB", "limit": 209715200}, {"pageSize": "1GB", "limit": 0}]}
    assert w(res) == [
        ("hugetlb", "hugetlb.2MB.limit_in_bytes", "209715200"),
        ("hugetlb", "hugetlb.1GB.limit_in_bytes", "0"),
    ]


def test_network() -> None:
    res = {
        "network": {
            "classID": 1048577,
            "priorities": [{"name": "eth0", "priority": 500}, {"name": "lo", "priority": 0}],
        }
    }
    assert w(res) == [
        ("net_cls", "net_cls.classid", "1048577"),
        ("net_prio", "net_prio.ifpriomap", "eth0 500"),
        ("net_prio", "net_prio.ifpriomap", "lo 0"),
    ]


def test_devices_in_order() -> None:
    res = {
        "devices": [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": True, "type": "c", "major": 136, "access": "rw"},
            {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "m"},
        ]
    }
    assert w(res) == [
        ("devices", "devices.deny", "a *:* rwm"),
        ("devices", "devices.allow", "c 1:3 rwm"),
        ("devices", "devices.allow", "c 136:* rw"),
        ("devices", "devices.deny", "c 1:3 m"),
    ]


def test_controllers_filter_skips_unmounted() -> None:
    res = {
        "cpu": {"shares": 10, "cpus": "0"},
        "memory": {"limit": 10, "swappiness": 500},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 1}],
        "network": {"classID": 1},
    }
    # sections of unmounted controllers are neither written nor checked
    assert w(res, controllers={"cpu"}) == [("cpu", "cpu.shares", "10")]
