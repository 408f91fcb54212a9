"""Stats parsers on files captured from this project's hybrid host (v1) and kernel-doc style v2
samples, and their normalization."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.cgroups import stats

DATA = Path(__file__).parent / "data"


def text(name: str) -> str:
    return (DATA / f"cgroups_{name}").read_text()


def test_parse_flat_v1_memory_stat() -> None:
    st = stats.parse_flat(text("v1_memory.stat"))
    assert st["rss"] == 39960576
    assert st["cache"] == 4657152
    assert st["unevictable"] == 42405888  # the capture ran mlockall()
    assert st["hierarchical_memory_limit"] == 9223372036854771712


def test_memory_v1_normalized() -> None:
    st = stats.parse_flat(text("v1_memory.stat"))
    oom = stats.parse_flat(text("v1_memory.oom_control"))
    assert oom == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 0}
    m = stats.memory_v1(st, 50_000_000, 60_000_000, stats.parse_value("9223372036854771712\n"), oom, 3)
    assert m == {
        "usage": 50_000_000,
        "max_usage": 60_000_000,
        "limit": None,
        "rss": 39960576,
        "anon": 39960576,
        "file": 4657152,
        "mlocked": 42405888,
        "swap": 0,
        "oom_kills": 0,
        "failcnt": 3,
    }


def test_cpu_v1() -> None:
    cpu_stat = stats.parse_flat(text("v1_cpu.stat"))
    assert cpu_stat["nr_throttled"] == 5
    assert cpu_stat["throttled_time"] == 249405253
    acct = stats.parse_flat(text("v1_cpuacct.stat"))
    c = stats.cpu_v1(327439802, None, None, acct, cpu_stat)
    assert c == {
        "usage_ns": 327439802,
        "user_ns": 300_000_000,
        "system_ns": 20_000_000,
        "throttled_ns": 249405253,
        "nr_throttled": 5,
        "nr_periods": 8,
    }
    assert stats.cpu_v1(1, 2, 3, acct, {})["user_ns"] == 2


def test_blkio_v1_captured_and_sample() -> None:
    captured = stats.parse_blkio_v1(text("v1_blkio.throttle.io_service_bytes_recursive"))
    assert captured == {"read": 0, "write": 0, "sync": 0, "async": 0, "discard": 0, "total": 0}
    sample = stats.parse_blkio_v1(text("v1_blkio.io_service_bytes_recursive.sample"))
    assert sample["read"] == 3280896 + 4096
    assert sample["write"] == 8388608
    serviced = stats.parse_blkio_v1(text("v1_blkio.throttle.io_serviced_recursive"))
    assert stats.blkio_v1(sample, serviced) == {
        "read_bytes": 3284992,
        "write_bytes": 8388608,
        "read_ios": 0,
        "write_ios": 0,
    }
    assert stats.blkio_v1({}, {}) == {"read_bytes": 0, "write_bytes": 0, "read_ios": 0, "write_ios": 0}


def test_cpu_v2_sample_and_hybrid_capture() -> None:
    c = stats.cpu_v2(stats.parse_flat(text("v2_cpu.stat")))
    assert c == {
        "usage_ns": 2381745000,
        "user_ns": 1902113000,
        "system_ns": 479632000,
        "throttled_ns": 1835210000,
        "nr_throttled": 37,
        "nr_periods": 120,
    }
    # the cgroup2 dir of a hybrid host has cpu.stat without the cpu controller: no throttling keys
    h = stats.cpu_v2(stats.parse_flat(text("v2_hybrid_cpu.stat")))
    assert h["usage_ns"] == 327439000
    assert h["nr_periods"] is None


def test_memory_v2() -> None:
    st = stats.parse_flat(text("v2_memory.stat"))
    ev = stats.parse_flat(text("v2_memory.events"))
    m = stats.memory_v2(st, 170_000_000, 180_000_000, stats.parse_value("max\n"), ev, 4096)
    assert m == {
        "usage": 170_000_000,
        "max_usage": 180_000_000,
        "limit": None,
        "rss": 52428800,
        "anon": 52428800,
        "file": 104857600,
        "mlocked": 8388608,
        "swap": 4096,
        "oom_kills": 1,
        "failcnt": 17,
    }


def test_io_stat() -> None:
    io = stats.parse_io_stat(text("v2_io.stat"))
    assert io["rbytes"] == 1459200 + 90430464
    assert stats.blkio_v2(io) == {
        "read_bytes": 91889664,
        "write_bytes": 613781504,
        "read_ios": 9142,
        "write_ios": 1605,
    }
    assert stats.parse_io_stat("") == {}


@pytest.mark.parametrize(
    ("raw", "value"), [(None, None), ("max\n", None), ("", None), ("42\n", 42), ("9223372036854771712", None)]
)
def test_parse_value(raw: str | None, value: int | None) -> None:
    assert stats.parse_value(raw) == value


def test_collect_v1_and_merge() -> None:
    files = {
        ("cpuacct", "cpuacct.usage"): "100\n",
        ("cpuacct", "cpuacct.usage_user"): "60\n",
        ("cpuacct", "cpuacct.usage_sys"): "40\n",
        ("cpu", "cpu.stat"): text("v1_cpu.stat"),
        ("memory", "memory.stat"): text("v1_memory.stat"),
        ("memory", "memory.usage_in_bytes"): "5\n",
        ("memory", "memory.limit_in_bytes"): "1048576\n",
        ("pids", "pids.current"): "3\n",
        ("pids", "pids.max"): "max\n",
    }
    got = stats.collect_v1(lambda c, f: files.get((c, f)))
    assert got["cpu"]["usage_ns"] == 100
    assert got["cpu"]["nr_periods"] == 8
    assert got["memory"]["usage"] == 5
    assert got["memory"]["limit"] == 1048576
    assert got["memory"]["max_usage"] is None
    assert got["pids"] == {"current": 3, "limit": None}
    assert got["blkio"]["read_bytes"] is None  # no blkio hierarchy: unknown
    v2 = stats.collect_v2(
        lambda c, f: {("memory", "memory.peak"): "9\n"}.get((c, f)) if c == "memory" else None
    )
    assert v2["memory"]["max_usage"] is None  # no memory.stat: memory section stays empty
    merged = stats.merge(got, {"memory": {"max_usage": 9}})
    assert merged["memory"]["max_usage"] == 9
    assert merged["memory"]["usage"] == 5
    assert set(merged) == {"cpu", "memory", "pids", "blkio"}
