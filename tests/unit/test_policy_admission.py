"""berth.policy.admission: reservations of CPU, memory and network may not be overbooked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.errors import AdmissionError, UsageError
from berth.policy.admission import admit, admit_memory, admit_net, unreserved_cpus
from berth.policy.cpu import CpuRequest, compute
from berth.policy.htb import NetRequest

GIB = 1024**3


def test_refusal_message() -> None:
    running = [CpuRequest("a", reserve=0.75), CpuRequest("b", reserve=0.75)]
    with pytest.raises(AdmissionError) as exc:
        admit(running, CpuRequest("c", reserve=1.5), 2)
    assert str(exc.value) == (
        "cpu-reserve: 1.5 CPUs requested, but only 0.40 of 2.00 CPUs are unreserved "
        "(1.50 reserved by 2 guests, 5% kept for the host)"
    )


def test_refusal_message_singular_and_custom_host_reserve() -> None:
    with pytest.raises(AdmissionError, match=r"only 0.00 of 1.00 CPUs .*\(1.00 reserved by 1 guest, 0% kept"):
        admit([CpuRequest("a", reserve=1)], CpuRequest("b", reserve=0.1), 1, host_reserve=0)


def test_fits_exactly() -> None:
    admit([CpuRequest("a", reserve=0.9)], CpuRequest("b", reserve=1.0), 2)  # 1.9 = 2 x 95%
    with pytest.raises(AdmissionError):
        admit([CpuRequest("a", reserve=0.9)], CpuRequest("b", reserve=1.01), 2)


def test_shares_and_caps_may_be_overbooked() -> None:
    running = [CpuRequest(f"g{i}", share=10000, cap=2) for i in range(50)] + [CpuRequest("r", reserve=1.9)]
    admit(running, CpuRequest("new", share=10000, cap=2), 2)


def test_changing_own_reservation_replaces_it() -> None:
    running = [CpuRequest("a", reserve=1.0), CpuRequest("b", reserve=0.5)]
    admit(running, CpuRequest("a", reserve=1.4), 2)
    with pytest.raises(AdmissionError, match=r"1.5 CPUs requested, but only 1.40 .*0.50 reserved by 1 guest"):
        admit(running, CpuRequest("a", reserve=1.5), 2)


def test_bad_input() -> None:
    with pytest.raises(UsageError, match="host-reserve"):
        admit([], CpuRequest("a", reserve=1), 2, host_reserve=1)
    with pytest.raises(UsageError, match="cpu-capacity"):
        admit([], CpuRequest("a", reserve=1), -2)
    with pytest.raises(UsageError, match="cpu-share"):
        admit([], CpuRequest("a", share=0), 2)


def test_unreserved_cpus() -> None:
    assert unreserved_cpus([CpuRequest("a", reserve=0.5)], 2) == pytest.approx(1.4)
    assert unreserved_cpus([], 4, host_reserve=0) == 4


@settings(max_examples=100)
@given(st.integers(50, 6400), st.lists(st.integers(0, 400), max_size=20))
def test_admitted_sets_always_compute(capacity_c: int, reserves_c: list[int]) -> None:
    """Whatever admission lets in, compute() accepts: the sum never exceeds the capacity."""
    capacity = capacity_c / 100
    running: list[CpuRequest] = []
    for i, r in enumerate(reserves_c):
        new = CpuRequest(f"g{i}", reserve=r / 100)
        try:
            admit(running, new, capacity)
        except AdmissionError:
            continue
        running.append(new)
    assert sum(r.reserve for r in running) <= capacity * 0.95 + 1e-9
    compute(running, capacity)


def test_memory() -> None:
    admit_memory({"a": 4 * GIB}, "b", 3 * GIB, 8 * GIB)
    with pytest.raises(AdmissionError) as exc:
        admit_memory({"a": 4 * GIB, "b": 2 * GIB}, "c", 2 * GIB, 8 * GIB)
    assert str(exc.value) == (
        "memory-reservation: 2GiB requested, but only 1.6GiB of 8GiB are unreserved "
        "(6GiB reserved by 2 guests, 5% kept for the host)"
    )
    admit_memory({"a": 4 * GIB}, "a", 7 * GIB, 8 * GIB)  # own entry replaced
    admit_memory({"a": 8 * GIB}, "b", 0, 8 * GIB)  # no reservation: always fits
    with pytest.raises(UsageError, match="memory-reservation"):
        admit_memory({}, "a", -1, 8 * GIB)
    with pytest.raises(UsageError, match="memory-capacity"):
        admit_memory({}, "a", 1, 0)


def test_net() -> None:
    running = [NetRequest("a", 0, rate_bps=600_000_000), NetRequest("b", 1)]
    admit_net(running, NetRequest("c", 2, rate_bps=400_000_000), 1_000_000_000)
    admit_net(running, NetRequest("c", 2, ceil_bps=10**9), 1_000_000_000)
    with pytest.raises(AdmissionError) as exc:
        admit_net(
            running, NetRequest("c", 2, rate_bps=500_000_000), 1_000_000_000, default_rate_bps=10_000_000
        )
    assert str(exc.value) == (
        "net-rate: 500Mbit/s requested, but only 390Mbit/s of 1Gbit/s are not guaranteed "
        "(600Mbit/s guaranteed to 1 guest, 10Mbit/s kept for the host)"
    )
    admit_net(running, NetRequest("a", 0, rate_bps=10**9), 10**9)  # own entry replaced
    with pytest.raises(UsageError, match="net-link-rate"):
        admit_net([], NetRequest("a", 0), 0)
