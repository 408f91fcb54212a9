"""berth.policy.units: parsers of sizes, rates, CPUs, durations, CPU sets, ulimits, device throttles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.errors import UsageError
from berth.policy.units import (
    INT64_MAX,
    RLIM_INFINITY,
    column_size,
    cpuset_members,
    format_cpuset,
    format_rate,
    format_size,
    parse_cpus,
    parse_cpuset,
    parse_device_iops,
    parse_device_rate,
    parse_duration,
    parse_rate,
    parse_size,
    parse_ulimit,
)

KIB, MIB, GIB = 1024, 1024**2, 1024**3


def usage(fn, *args) -> str:
    with pytest.raises(UsageError) as exc:
        fn(*args)
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64M", 64 * MIB),
        ("64m", 64 * MIB),
        ("64MB", 64 * MIB),  # docker: binary even with "B"
        ("64mb", 64 * MIB),
        ("64MiB", 64 * MIB),
        ("1G", GIB),
        ("1.5G", GIB * 3 // 2),
        ("512k", 512 * KIB),
        ("100", 100),
        ("100b", 100),
        ("0", 0),
        (" 64 m ", 64 * MIB),
        ("0.3k", 307),  # truncated, as docker does
        ("2t", 2 * 1024**4),
        ("1p", 1024**5),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size("--memory", text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-1g", "negative"),
        ("64x", "unknown unit 'x'"),
        ("64gig", "unknown unit"),
        ("g", "start with a number"),
        ("1.g", "decimal point"),
        (".5g", "start with a number"),
        ("nan", "start with a number"),
        ("1e3", "unknown unit"),
        ("9000p", "too large"),
        ("١٢", "start with a number"),  # non-ASCII digits
    ],
)
def test_parse_size_errors(text: str, needle: str) -> None:
    msg = usage(parse_size, "--memory", text)
    assert msg.startswith("--memory: ")
    assert needle in msg


@settings(max_examples=200)
@given(
    st.integers(0, 10**6),
    st.sampled_from(["", "b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib", "t"]),
    st.booleans(),
)
def test_parse_size_units(n: int, unit: str, upper: bool) -> None:
    mult = {"": 1, "b": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1024**4}[unit[:1]]
    assert parse_size("f", f"{n}{unit.upper() if upper else unit}") == n * mult


@given(st.integers(0, 10**9), st.integers(0, 999))
def test_parse_size_fractions_exact(whole: int, frac: int) -> None:
    assert parse_size("f", f"{whole}.{frac:03d}k") == (whole * 1000 + frac) * KIB // 1000


def test_parse_size_limit() -> None:
    assert parse_size("f", str(INT64_MAX)) == INT64_MAX
    assert "too large" in usage(parse_size, "f", str(INT64_MAX + 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100mbit", 100_000_000),
        ("1gbit", 1_000_000_000),
        ("1Gbit", 1_000_000_000),
        ("500kbit", 500_000),
        ("10mbps", 80_000_000),  # bytes per second, as tc
        ("10MBps", 80_000_000),
        ("1kibit", 1024),
        ("1mibps", 8 * MIB),
        ("1000", 1000),  # bare number: bit/s
        ("1000bit", 1000),
        ("8bps", 64),
        ("1.5mbit", 1_500_000),
    ],
)
def test_parse_rate(text: str, expected: int) -> None:
    assert parse_rate("--net-rate", text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0", "at least 1 bit/s"),
        ("0mbit", "at least"),
        ("-5mbit", "negative"),
        ("5mb", "unknown unit"),
        ("", "empty"),
    ],
)
def test_parse_rate_errors(text: str, needle: str) -> None:
    msg = usage(parse_rate, "--net-rate", text)
    assert msg.startswith("--net-rate: ")
    assert needle in msg


@pytest.mark.parametrize(
    ("rate", "text"),
    [(1_000_000_000, "1Gbit/s"), (2_500_000, "2.5Mbit/s"), (800, "800bit/s"), (1000, "1Kbit/s")],
)
def test_format_rate(rate: int, text: str) -> None:
    assert format_rate(rate) == text


@pytest.mark.parametrize(
    ("n", "text"), [(64 * MIB, "64MiB"), (GIB * 3 // 2, "1.5GiB"), (100, "100B"), (KIB, "1KiB")]
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize(
    ("text", "host", "expected"),
    [("0.5", 2, 0.5), ("1", 2, 1.0), ("2", 2, 2.0), ("25%", 4, 1.0), ("12.5%", 8, 1.0), ("100%", 3, 3.0)],
)
def test_parse_cpus(text: str, host: int, expected: float) -> None:
    assert parse_cpus("--cpus", text, host) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0", "more than 0"),
        ("0%", "more than 0"),
        ("-1", "negative"),
        ("3", "more than the 2 CPUs"),
        ("101%", "more than the 2 CPUs"),
        ("nan", "must start with a number"),
        ("inf", "must start with a number"),
        ("1e0", "not a CPU amount"),
        ("1 cpu", "not a CPU amount"),
        ("%", "empty"),
    ],
)
def test_parse_cpus_errors(text: str, needle: str) -> None:
    msg = usage(parse_cpus, "--cpus", text, 2)
    assert msg.startswith("--cpus: ")
    assert needle in msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200ms", 200_000),
        ("1s", 1_000_000),
        ("500us", 500),
        ("500µs", 500),
        ("2m", 120_000_000),
        ("1h", 3_600_000_000),
        ("1.5s", 1_500_000),
        ("100000", 100_000),  # bare: microseconds
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, expected: int) -> None:
    assert parse_duration("--cpu-period", text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1.5us", "whole number of microseconds"),
        ("-1s", "negative"),
        ("5d", "unknown unit"),
        ("", "empty"),
        ("ms", "number"),
    ],
)
def test_parse_duration_errors(text: str, needle: str) -> None:
    assert needle in usage(parse_duration, "--cpu-period", text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-1", "0-1"),
        ("0,1", "0-1"),
        ("1,0", "0-1"),
        ("3,0-1,2", "0-3"),
        ("0,2", "0,2"),
        ("5", "5"),
        ("0-0", "0"),
        (" 1 , 3-4\n", "1,3-4"),
    ],
)
def test_parse_cpuset(text: str, expected: str) -> None:
    assert parse_cpuset("--cpuset-cpus", text, 8) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("8", "CPU 8 does not exist (this host has 0-7)"),
        ("6-9", "CPU 8-9 does not exist"),
        ("", "empty"),
        ("3-1", "runs backwards"),
        ("a", "not a CPU number"),
        ("1-", "not a CPU number"),
        ("-1", "not a CPU number"),
        ("0,,1", "not a CPU number"),
    ],
)
def test_parse_cpuset_errors(text: str, needle: str) -> None:
    assert needle in usage(parse_cpuset, "--cpuset-cpus", text, 8)


def test_parse_cpuset_host_set() -> None:
    assert parse_cpuset("f", "2,4", {0, 2, 4}) == "2,4"
    assert "CPU 1 does not exist (this host has 0,2,4)" in usage(parse_cpuset, "f", "1", [0, 2, 4])


@given(st.sets(st.integers(0, 63), min_size=1))
def test_cpuset_roundtrip(cpus: set[int]) -> None:
    text = format_cpuset(cpus)
    assert cpuset_members("f", text) == sorted(cpus)
    assert parse_cpuset("f", text, 64) == text  # normalized text is a fixed point
    shuffled = ",".join(str(c) for c in sorted(cpus, reverse=True))
    assert parse_cpuset("f", shuffled, 64) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nofile=1024:2048", ("RLIMIT_NOFILE", 1024, 2048)),
        ("nofile=1024", ("RLIMIT_NOFILE", 1024, 1024)),
        ("NPROC=10:unlimited", ("RLIMIT_NPROC", 10, RLIM_INFINITY)),
        ("memlock=-1:-1", ("RLIMIT_MEMLOCK", RLIM_INFINITY, RLIM_INFINITY)),
        ("RLIMIT_CORE=0", ("RLIMIT_CORE", 0, 0)),
        ("stack=infinity", ("RLIMIT_STACK", RLIM_INFINITY, RLIM_INFINITY)),
    ],
)
def test_parse_ulimit(text: str, expected: tuple[str, int, int]) -> None:
    assert parse_ulimit("--ulimit", text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nofile", "not name=soft[:hard]"),
        ("as=1", "unknown ulimit 'as'"),
        ("bogus=1", "unknown ulimit"),
        ("nofile=2048:1024", "soft limit is above the hard limit"),
        ("nofile=unlimited:1024", "soft limit is above"),
        ("nofile=-2", "is not a limit"),
        ("nofile=1k", "is not a limit"),
        ("nofile=", "is not a limit"),
        (f"nofile={2**64}", "too large"),
    ],
)
def test_parse_ulimit_errors(text: str, needle: str) -> None:
    msg = usage(parse_ulimit, "--ulimit", text)
    assert msg.startswith("--ulimit: ")
    assert needle in msg


def test_parse_device_rate() -> None:
    assert parse_device_rate("--device-read-bps", "/dev/sda:10mb") == ("/dev/sda", 10 * MIB)
    assert parse_device_rate("f", "/dev/disk/by-id/x:1g") == ("/dev/disk/by-id/x", GIB)
    assert parse_device_iops("--device-read-iops", "/dev/sda:1000") == ("/dev/sda", 1000)


@pytest.mark.parametrize(
    ("fn", "text", "needle"),
    [
        (parse_device_rate, "/dev/sda", "not <device-path>:<value>"),
        (parse_device_rate, ":10mb", "not <device-path>:<value>"),
        (parse_device_rate, "sda:10mb", "not absolute"),
        (parse_device_rate, "/dev/sda:0", "must be positive"),
        (parse_device_rate, "/dev/sda:10x", "unknown unit"),
        (parse_device_iops, "/dev/sda:1.5", "not a positive whole number"),
        (parse_device_iops, "/dev/sda:0", "not a positive whole number"),
        (parse_device_iops, "/dev/sda:-3", "not a positive whole number"),
    ],
)
def test_parse_device_errors(fn, text: str, needle: str) -> None:
    assert needle in usage(fn, "--device", text)


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "-"), (0, "0B"), (1023, "1023B"), (KIB, "1.0K"), (GIB * 3 // 2, "1.5G"), (12 * MIB, "12.0M")],
)
def test_column_size(n: int | None, text: str) -> None:
    assert column_size(n) == text
