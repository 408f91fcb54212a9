"""OCI linux.resources → cgroup v2 writes (runc's fs2 mapping and specconv conversions): pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.cgroups import v2
from berth.errors import UsageError


def w(resources: dict, **kw) -> list[tuple[str, str, str]]:
    return [x.astuple() for x in v2.writes(resources, **kw)]


def test_empty() -> None:
    assert w({}) == []


@pytest.mark.parametrize(
    ("shares", "weight"), [(0, 0), (2, 1), (1024, 39), (262144, 10000), (1, 1), (10**9, 10000), (512, 20)]
)
def test_shares_to_weight(shares: int, weight: int) -> None:
    assert v2.shares_to_weight(shares) == weight


@given(st.integers(2, 262144), st.integers(2, 262144))
def test_shares_to_weight_monotonic_in_range(a: int, b: int) -> None:
    wa, wb = v2.shares_to_weight(a), v2.shares_to_weight(b)
    assert 1 <= wa <= 10000
    assert (a <= b) <= (wa <= wb)


@pytest.mark.parametrize(("blkio", "io"), [(0, 0), (10, 1), (500, 4950), (1000, 10000)])
def test_blkio_to_io_weight(blkio: int, io: int) -> None:
    assert v2.blkio_to_io_weight(blkio) == io


def test_cpu() -> None:
    res = {
        "cpu": {
            "shares": 1024,
            "quota": 50000,
            "period": 100000,
            "burst": 20000,
            "idle": 1,
            "cpus": "0",
            "mems": "0",
        }
    }
    assert w(res) == [
        ("cpu", "cpu.idle", "1"),
        ("cpu", "cpu.weight", "39"),
        ("cpu", "cpu.max.burst", "20000"),
        ("cpu", "cpu.max", "50000 100000"),
        ("cpuset", "cpuset.cpus", "0"),
        ("cpuset", "cpuset.mems", "0"),
    ]
    assert v2.writes(res)[2].retry


@pytest.mark.parametrize(
    ("cpu", "value"),
    [
        ({"quota": -1}, "max"),
        ({"quota": -1, "period": 20000}, "max 20000"),
        ({"period": 20000}, "max 20000"),
        ({"quota": 1000}, "1000"),
    ],
)
def test_cpu_max(cpu: dict, value: str) -> None:
    assert w({"cpu": cpu}) == [("cpu", "cpu.max", value)]


def test_realtime_refused() -> None:
    with pytest.raises(UsageError) as err:
        v2.writes({"cpu": {"realtimeRuntime": 1000}})
    assert err.value.field == "linux.resources.cpu.realtimeRuntime"


@pytest.mark.parametrize(
    ("mem", "expected"),
    [
        ({"limit": 100}, [("memory", "memory.max", "100")]),
        (
            {"limit": 100, "swap": 300},
            [("memory", "memory.swap.max", "200"), ("memory", "memory.max", "100")],
        ),
        ({"limit": 100, "swap": 100}, [("memory", "memory.swap.max", "0"), ("memory", "memory.max", "100")]),
        ({"limit": 100, "swap": -1}, [("memory", "memory.swap.max", "max"), ("memory", "memory.max", "100")]),
        ({"limit": -1}, [("memory", "memory.swap.max", "max"), ("memory", "memory.max", "max")]),
        ({"reservation": 50}, [("memory", "memory.low", "50")]),
        ({"swappiness": 60, "disableOOMKiller": True, "kernel": 1, "kernelTCP": 1, "useHierarchy": True}, []),
    ],
)
def test_memory(mem: dict, expected: list) -> None:
    assert w({"memory": mem}) == expected


def test_swap_max_written_optional_only_for_max_and_zero() -> None:
    opt = {
        x.value: x.optional
        for x in v2.writes({"memory": {"limit": 100, "swap": 300}})
        if x.file == "memory.swap.max"
    }
    assert opt == {"200": False}
    opt = {x.value: x.optional for x in v2.writes({"memory": {"limit": -1}}) if x.file == "memory.swap.max"}
    assert opt == {"max": True}


@pytest.mark.parametrize(
    "mem", [{"swap": 100}, {"limit": -1, "swap": 100}, {"limit": 200, "swap": 100}, {"swappiness": 101}]
)
def test_memory_refused(mem: dict) -> None:
    with pytest.raises(UsageError):
        v2.writes({"memory": mem})


@pytest.mark.parametrize(("limit", "value"), [(-1, "max"), (0, "max"), (32, "32")])
def test_pids(limit: int, value: str) -> None:
    assert w({"pids": {"limit": limit}}) == [("pids", "pids.max", value)]


def test_io() -> None:
    res = {
        "blockIO": {
            "weight": 500,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 600}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 0}],
            "throttleReadIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 200}],
        }
    }
    assert w(res) == [
        ("io", "io.weight", "4950"),
        ("io", "io.bfq.weight", "8:0 600"),
        ("io", "io.max", "8:0 rbps=1048576"),
        ("io", "io.max", "8:0 wbps=max"),
        ("io", "io.max", "8:16 riops=100"),
        ("io", "io.max", "8:16 wiops=200"),
    ]
    assert w({"blockIO": {"weight": 500}}, bfq=True) == [("io", "io.bfq.weight", "500")]
    with pytest.raises(UsageError):
        v2.writes({"blockIO": {"weight": 5}})


def test_hugetlb() -> None:
    assert w({"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}) == [
        ("hugetlb", "hugetlb.2MB.max", "4194304")
    ]


def test_network_ignored() -> None:
    assert w({"network": {"classID": 1, "priorities": [{"name": "eth0", "priority": 1}]}}) == []


def test_unified_last_and_wins() -> None:
    res = {
        "cpu": {"shares": 1024},
        "unified": {"cpu.weight": "300", "memory.high": "1G", "cgroup.max.depth": "4"},
    }
    assert w(res) == [
        ("cpu", "cpu.weight", "39"),
        ("cpu", "cpu.weight", "300"),
        ("memory", "memory.high", "1G"),
        ("", "cgroup.max.depth", "4"),
    ]


@pytest.mark.parametrize(
    "unified", [{"../x.y": "1"}, {"nodot": "1"}, {"memory.high": 5}, {"memory.high": "1"}]
)
def test_unified_refused(unified: dict) -> None:
    with pytest.raises(UsageError) as err:
        v2.writes({"unified": unified}, controllers={"cpu"})
    assert err.value.field.startswith("linux.resources.unified.")


def test_controllers_scope() -> None:
    # a hybrid host where only hugetlb is on cgroup2: the rest is v1's business, not checked here
    res = {
        "cpu": {"realtimeRuntime": 5, "shares": 10},
        "memory": {"limit": 1},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "unified": {"cgroup.freeze": "0"},
    }
    assert w(res, controllers={"hugetlb"}) == [
        ("hugetlb", "hugetlb.2MB.max", "0"),
        ("", "cgroup.freeze", "0"),
    ]
