"""berth.policy.memory: docker's memory rules, ANON and MEMLOCK enforcement decisions,
/proc/PID/status parsing on files captured from a real host (tests/unit/data/policy_*)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.errors import UsageError
from berth.policy.memory import (
    MIN_MEMORY,
    LockedProcess,
    MemoryLimits,
    anon_bytes,
    anon_overrun,
    memlock_victim,
    parse_proc_status,
    validate_memory,
)

DATA = Path(__file__).parent / "data"
MIB = 1024**2


def test_validate_defaults_like_docker() -> None:
    assert validate_memory() == MemoryLimits(None, None, None)
    lim = validate_memory(64 * MIB)
    assert lim == MemoryLimits(64 * MIB, 128 * MIB, None)  # as much swap as memory
    assert lim.swap_max == 64 * MIB
    assert lim.memsw_limit == 128 * MIB
    no_swap = validate_memory(64 * MIB, 64 * MIB)
    assert no_swap.swap_max == 0
    unlimited = validate_memory(64 * MIB, -1, 32 * MIB)
    assert unlimited == MemoryLimits(64 * MIB, None, 32 * MIB)
    assert unlimited.swap_max is None
    assert unlimited.memsw_limit == -1
    assert validate_memory(0, 0, 0) == MemoryLimits(None, None, None)  # 0 = unset
    assert validate_memory(None, -1) == MemoryLimits(None, None, None)
    assert validate_memory(reservation=MIN_MEMORY).reservation == MIN_MEMORY
    assert validate_memory(MIN_MEMORY).memory == MIN_MEMORY


@pytest.mark.parametrize(
    ("args", "field", "needle"),
    [
        ((MIN_MEMORY - 1,), "memory", "below the minimum of 6MiB"),
        ((None, 64 * MIB), "memory-swap", "needs a memory limit"),
        ((64 * MIB, 32 * MIB), "memory-swap", "below the memory limit 64MiB"),
        ((64 * MIB, None, 128 * MIB), "memory-reservation", "above the memory limit"),
        ((None, None, MIB), "memory-reservation", "below the minimum"),
        ((-5,), "memory", "negative"),
        ((None, -2), "memory-swap", "negative"),
        ((1.5,), "memory", "whole number"),
    ],
)
def test_validate_errors(args: tuple, field: str, needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        validate_memory(*args)
    assert exc.value.field == field
    assert needle in str(exc.value)


def parse_memory_stat(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line)}


def test_anon_from_captured_v1_memory_stat() -> None:
    stat = parse_memory_stat((DATA / "policy_memory_stat_v1.txt").read_text())
    assert anon_bytes(stat) == stat["total_rss"]  # hierarchical preferred
    assert anon_overrun(stat["total_rss"] - 1, stat)
    assert not anon_overrun(stat["total_rss"], stat)
    assert not anon_overrun(None, stat)


def test_anon_v2_and_flat_v1() -> None:
    assert anon_bytes({"anon": 5, "file": 100}) == 5
    assert anon_bytes({"rss": 7, "cache": 100}) == 7
    with pytest.raises(ValueError, match="no anon"):
        anon_bytes({"file": 1})


def test_memlock_victim() -> None:
    procs = [(10, 4 * MIB, 50 * MIB, 100), (11, 8 * MIB, 10 * MIB, 50), (12, 8 * MIB, 5 * MIB, 300)]
    assert memlock_victim(None, procs) is None
    assert memlock_victim(20 * MIB, procs) is None  # exactly at the limit is fine
    assert memlock_victim(20 * MIB - 1, procs) == 12  # largest holder, youngest of the two
    assert memlock_victim(0, [LockedProcess(1, 0, 9, 1), LockedProcess(2, 1, 0, 0)]) == 2
    # same VmLck and start: larger RSS, then higher pid
    assert memlock_victim(0, [(1, 5, 9, 1), (2, 5, 8, 1)]) == 1
    assert memlock_victim(0, [(1, 5, 9, 1), (2, 5, 9, 1)]) == 2
    assert memlock_victim(0, []) is None


@settings(max_examples=100)
@given(
    st.integers(0, 10**9),
    st.lists(
        st.tuples(st.integers(1, 2**22), st.integers(0, 10**8), st.integers(0, 10**9), st.integers(0, 10**6)),
        max_size=12,
        unique_by=lambda p: p[0],
    ),
)
def test_memlock_victim_properties(limit: int, procs: list[tuple[int, int, int, int]]) -> None:
    victim = memlock_victim(limit, procs)
    total = sum(p[1] for p in procs)
    if total <= limit:
        assert victim is None
        return
    by_pid = {p[0]: p for p in procs}
    assert victim in by_pid
    chosen = by_pid[victim]
    assert chosen[1] == max(p[1] for p in procs) > 0
    assert chosen[3] == max(p[3] for p in procs if p[1] == chosen[1])


def test_parse_captured_status() -> None:
    st_ = parse_proc_status((DATA / "policy_proc_status_mlocked.txt").read_text())
    assert st_["VmLck"] == 4096 * 1024  # the capture mlock()ed 4 MiB
    assert st_["VmRSS"] >= st_["VmLck"]
    assert st_["Pid"] > 0
    assert st_["Threads"] >= 1
    assert st_["Umask"] == 0o022
    assert "Uid" not in st_  # several values
    assert "State" not in st_
    assert "CapEff" not in st_  # hex masks are not numbers
    assert "Cpus_allowed" not in st_
    assert "Name" not in st_

    cat = parse_proc_status((DATA / "policy_proc_status_cat.txt").read_text())
    assert cat["VmLck"] == 0
    assert cat["VmRSS"] == 1620 * 1024

    kthread = parse_proc_status((DATA / "policy_proc_status_kthreadd.txt").read_text())
    assert "VmLck" not in kthread
    assert kthread["Pid"] == 2
    assert kthread.get("VmRSS", 0) == 0


def test_parse_odd_lines() -> None:
    assert parse_proc_status("garbage\nVmLck:\t  12 kB\nFoo: 1 MB\nBar: -3\n\n") == {"VmLck": 12 * 1024}
